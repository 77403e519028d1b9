"""Masking checks (docs/EVALUATION.md rule 6): the classic signs of gradient masking, computed from the protocol's rows,
attack statistics and per-sample records.  Each check is a record {name, passed, value, threshold, detail,
category, reason}: passed True (ok), False (failed: printed in every report, never hidden) or None (not run, the
detail says why).  category: 'masking' (the exact attack's gradient is masked, wrong or uninformative),
'convergence' (more steps needed: answered by escalation, not a masking verdict), 'coverage' (an attack the
defence calls for is missing).

Paired checks (convergence, 'X not stronger than exact'): the two candidates' outcomes on the same samples and the
same report draws, compared by the paired 95 % interval of the drop (stats.paired_drop); 'ok' means the upper end
is at most cfg.paired_margin (3 points by default): the effect is shown small, not merely unproven.
"""

from __future__ import annotations

from itertools import pairwise

import torch

from ..attacks.pgd import fixed_noise_seeds
from .stats import paired_drop


def _check(name: str, passed, value, threshold, detail: str, category: str = "masking", reason: str | None = None
           ) -> dict:
    return {"name": name, "passed": passed, "value": value, "threshold": threshold, "detail": detail,
            "category": category, "reason": reason if passed is False else None}


def escalated_name(name: str, steps: int) -> str:
    """The name of the rerun with 2× the steps of an attack that had not converged (ProtocolConfig.escalate)."""
    return f"{name}@{2 * steps}"


def converged(drop: dict | None, cfg) -> bool:
    """The paired convergence rule: the upper end of the 95 % interval of (half-steps − full) accuracy ≤ margin."""
    return drop is not None and drop["ci95"][1] <= cfg.paired_margin


def _outcomes(records: list[dict], name: str, key: str = "preds") -> dict:
    """{record index: per-draw correctness} of one attack's candidate (key 'half_preds': its half-steps prefix)."""
    out = {}
    for b, rec in enumerate(records):
        a = rec["attacks"].get(name)
        if a is not None and key in a:
            out[b] = [int(p == rec["label"]) for p in a[key]]
    return out


def _paired(first: dict, second: dict, floor: int = 0) -> dict | None:
    """paired_drop (first − second) on the samples both candidates have (floor: see paired_drop)."""
    common = sorted(set(first) & set(second))
    if not common:
        return None
    return paired_drop(torch.tensor([first[b] for b in common]), torch.tensor([second[b] for b in common]),
                       floor=floor)


def _fmt(d: dict) -> str:
    return (f"{100 * d['drop']:+.1f} points [{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}] on {d['n']} "
            f"samples × {d['draws']} draws ({d['down']} down, {d['up']} up)")


def gradient_fidelity(defence, x: torch.Tensor, ids: torch.Tensor, cfg) -> dict | None:
    """Does the gradient the exact attacks use match the purifier's derivative?  On the first cfg.fd_n samples, one
    fixed noise draw: autograd's w·∂P/∂x·v (grad='full', random w) against the central difference
    (w·P(x + hv) − w·P(x − hv)) / 2h along two random sign directions v (pixels within h of 0 or 1 not moved), at
    h = 10·fd_h, fd_h and fd_h / 10; the smallest relative error counts (truncation error shrinks with h, rounding
    error grows: a right gradient agrees at one of them, a wrong one at none).  Also whether the backward pass is
    exactly the identity (a purifier run without gradients and re-attached to its input).  None for a defence
    without a purifier."""
    p = defence.purifier
    if p is None:
        return None
    k = min(len(x), cfg.fd_n)
    x, seeds = x[:k].detach(), fixed_noise_seeds(cfg.seed, ids[:k])
    g = torch.Generator().manual_seed(cfg.seed)
    xr = x.clone().requires_grad_(True)
    with torch.enable_grad():
        out = p(xr, seed=seeds, grad="full")
        w = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
        (gx,) = torch.autograd.grad((w * out).sum(), xr)
    dirs = [torch.randn(x.shape, generator=g, dtype=torch.float64).sign().to(x) for _ in range(2)]
    errors, fds, zero = {}, [], True
    with torch.no_grad():
        for h in (10 * cfg.fd_h, cfg.fd_h, cfg.fd_h / 10):
            inside = ((x - h) >= 0) & ((x + h) <= 1)
            fd, ad = [], []
            for v in dirs:
                v = v * inside
                fp = (w * p(x + h * v, seed=seeds, grad="full")).flatten(1).sum(1)
                fm = (w * p(x - h * v, seed=seeds, grad="full")).flatten(1).sum(1)
                fd.append((fp - fm).double() / (2 * h))
                ad.append((gx * v).flatten(1).sum(1).double())
            fd, ad = torch.cat(fd), torch.cat(ad)
            zero &= float(ad.abs().max()) == 0.0
            errors[h] = _rel(fd, ad)
            fds.append(fd)
    h_best = min(errors, key=errors.get)
    # finite differences that change with h: not smooth at these scales (or float32 rounding) — no verdict then
    spread = min(_rel(a, b) for a, b in pairwise(fds))
    return {"rel_error": round(errors[h_best], 6), "h": h_best, "rel_error_by_h": {f"{h:g}": round(e, 6)
            for h, e in errors.items()}, "fd_spread": round(spread, 6), "dtype": str(out.dtype).removeprefix("torch."),
            "identity_backward": out.shape == x.shape and bool(torch.equal(gx, w)), "zero_gradient": zero, "n": k,
            "directions": len(dirs)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm()) / max(float(a.norm()), float(b.norm()), 1e-12)


def _fidelity_check(f: dict, cfg) -> dict:
    """Passed: autograd agrees at some h.  Failed: a zero gradient, or finite differences that agree among step
    sizes (so they are the derivative) and disagree with autograd.  Not run: finite differences that change with h
    (not smooth at these scales, e.g. a strongly guided sampler in float32): the gradient is neither confirmed nor
    refuted."""
    stable = f["fd_spread"] <= cfg.fd_tol
    ok = f["rel_error"] <= cfg.fd_tol
    if not ok and not f["zero_gradient"] and not stable:
        ok = None
    reason = ("zero gradient: the purifier's autograd derivative is 0 where finite differences are not"
              if f["zero_gradient"] else
              "straight-through: the backward pass is the identity (the purifier runs without gradients and is "
              "re-attached to its input) but its derivative is not" if f["identity_backward"] else
              "approximate gradient: the 'exact' gradient is not the purifier's derivative")
    detail = (f"relative error of autograd against central differences of w·P(x) (best h {f['h']:g}; finite "
              f"differences agree among step sizes to {f['fd_spread']:g}), {f['n']} samples × {f['directions']} "
              f"directions, one fixed noise draw, {f['dtype']}")
    if ok is None:
        detail = ("not run: the finite differences change with the step size (not smooth at these scales in "
                  f"{f['dtype']}), so they neither confirm nor refute the gradient; " + detail)
    return _check("gradient_matches_finite_differences", ok, f["rel_error"], cfg.fd_tol, detail, reason=reason)


def _convergence_checks(names, specs, ran, records, cfg) -> list[dict]:
    """Doubling the steps (steps // 2 → steps, same seeds and report draws) must not lower the accuracy by more
    than the margin (paired); otherwise the figure needs more steps (escalation reruns with 2× the steps)."""
    out = []
    for name in names:
        steps = specs[name].steps
        # a cascaded attack skipped the samples at the floor (wrong on every draw: 0 at any length); they count
        # with a drop of 0, so the drop is in points of the robust accuracy over all samples, like the report's
        half, full = _outcomes(records, name, "half_preds"), _outcomes(records, name)
        floor = len(records) - len(full) if specs[name].cascade else 0
        drop = _paired(half, full, floor) if records else None
        what = (f"accuracy with {steps // 2} steps minus with {steps} (paired, same draws"
                + (f"; {floor} samples at the floor, skipped, count 0" if floor else "") + ")")
        if drop is None:
            out.append(_check(f"{name}_converged", None, None, cfg.paired_margin, "not run: the records carry no "
                              "per-sample half-steps outcomes for this attack", "convergence"))
            continue
        ok, after = converged(drop, cfg), escalated_name(name, steps)
        detail = f"{what}: {_fmt(drop)}; ok when the upper end ≤ {cfg.paired_margin}"
        if not ok and after in specs:
            detail += (f" (rerun as {after}: see its check)" if after in ran else
                       f" (not judged: its rerun {after} was skipped, every sample already wrong on every selection "
                       "and report draw)")
            ok = None
        out.append(_check(f"{name}_converged", ok, drop["ci95"][1], cfg.paired_margin, detail, "convergence",
                          "not converged: more steps needed (escalate)"))
    return out


def _stronger_checks(defence, specs, ran, records, cfg) -> list[dict]:
    """No other attack may beat exact PGD/APGD on the pipeline itself (the reference: not 'joint', whose loss adds
    the auxiliary network's): the paired drop (reference − attack) must stay within the margin against at least one
    reference.  Cascaded and component attacks included.  A cascaded exact attack is no reference: it ran only on
    the samples every earlier attack (the one judged included) left standing, where the two agree by construction,
    so 'at least one reference' would pass through it whatever the judged attack did elsewhere.  Nor is it judged:
    exact on the pipeline with another loss, beating exact PGD-CE is no sign of masking."""
    refs = [n for n in ran if specs[n].reference and not specs[n].cascade]
    out = []
    for name in ran:
        if specs[name].reference:  # exact on the pipeline itself (a restart with another loss too): no masking sign
            continue
        mine = _outcomes(records, name)
        pairs = [(r, _paired(_outcomes(records, r), mine)) for r in refs]
        pairs = [(r, d) for r, d in pairs if d is not None]
        if not pairs:
            out.append(_check(f"{name}_not_stronger_than_exact", None, None, cfg.paired_margin,
                              "not run: no per-sample outcomes shared with an exact PGD/APGD attack"))
            continue
        ref, d = min(pairs, key=lambda rd: rd[1]["ci95"][1])
        ok = d["ci95"][1] <= cfg.paired_margin
        component = specs[name].kind in ("aux", "joint")
        reason = ("the pipeline's white-box gradient is uninformative: the figure rests on the attacks on the "
                  "auxiliary network, not on exact PGD" if component else
                  f"the exact gradient is weaker than {name}'s: masked, obfuscated or not converged")
        out.append(_check(f"{name}_not_stronger_than_exact", ok, d["ci95"][1], cfg.paired_margin,
                          f"{ref} accuracy minus {name} accuracy: {_fmt(d)}; ok when the upper end ≤ "
                          f"{cfg.paired_margin}", reason=reason))
    return out


@torch.no_grad()
def masking_checks(defence, attacks, rows, stats_by_name, large, cfg, *, records: list[dict] | None = None,
                   fidelity: dict | None = None) -> list[dict]:
    """The classic signs of gradient masking (docs/EVALUATION.md rule 6), each a named record.  records: the protocol's
    per-sample records (label, each attack's report-draw 'preds' and, for exact attacks, 'half_preds'); the paired
    checks say 'not run' without them.  fidelity: gradient_fidelity's result."""
    out = []
    specs = {a.name: a for a in attacks}
    ran = {r["attack"]: r for r in rows if "skipped" not in r}
    exact = [n for n in ran if specs[n].exact]
    if exact:  # 1. input elements with an exactly zero gradient at some step of an exact attack
        frac = max(stats_by_name[n]["zero_grad_elem_frac_max"] for n in exact)
        out.append(_check("zero_gradient_elements", frac <= cfg.zero_grad_tol, frac, cfg.zero_grad_tol,
                          "largest fraction of input elements with an exactly zero gradient in an exact attack",
                          reason="zero gradient"))
    if fidelity is not None:  # 2. the exact gradient is the purifier's derivative
        out.append(_fidelity_check(fidelity, cfg))
    if defence.randomized:  # 3. nothing beats exact PGD on the pipeline (paired)
        out += _stronger_checks(defence, specs, ran, records or [], cfg)
    out += _convergence_checks(exact, specs, ran, records, cfg)  # 4. convergence (paired)
    if large is not None:  # 5. large ε with a plain CE attack → ~0 % (clean-correct samples)
        out.append(_check("large_eps_near_zero", large["mean"] <= cfg.near_zero, large["mean"], cfg.near_zero,
                          f"plain CE attack, exact gradients, eps {large['eps']} on {large['n_examples']} "
                          "clean-correct samples", reason="large ε does not break the defence: masking"))
    blind = [n for n in ran if specs[n].kind == "blind"]
    if defence.randomized and blind:  # 6. the undefended classifier on the 'blind' candidates → ~0 %
        acc, robust = ran[blind[0]].get("undefended_acc"), getattr(defence, "robust_classifier", False)
        passed = None if robust or acc is None else acc <= cfg.near_zero
        out.append(_check("undefended_near_zero", passed, acc, cfg.near_zero,
                          "the classifier alone on the blind-attack images, samples it classifies right clean"
                          + (" (not run: an adversarially trained classifier)" if robust else "")
                          + (" (not run: no clean-correct sample)" if acc is None and not robust else ""),
                          reason="the attack does not break the undefended classifier"))
    if defence.aux is not None or defence.variants:  # 7. every component an adaptive attacker targets
        kinds, variants = {a.kind for a in attacks}, {a.variant for a in attacks}
        missing = [] if defence.aux is None or kinds & {"aux", "joint"} else ["aux or joint (the auxiliary network)"]
        missing += [f"pgd on variant {v!r}" for v in sorted(defence.variants) if v not in variants]
        out.append(_check("adaptive_attacks_for_components", not missing, len(missing), 0,
                          "attacks missing from the ensemble: " + (", ".join(missing) or "none"), "coverage",
                          "the figure is an upper bound of unknown slack"))
    return out


def check_notes(checks: list[dict]) -> list[str]:
    """What the checks say, in words: each failure with its reason; 'all checks pass' only when every check ran
    and passed."""
    failed = [c for c in checks if c["passed"] is False]
    not_run = [c for c in checks if c["passed"] is None]
    notes = [f"{c['name']} FAILED ({c['category']}): {c['reason']}" for c in failed]
    if any(c["category"] == "masking" and "auxiliary network" in (c["reason"] or "") for c in failed):
        notes.append("the pipeline's white-box gradient is uninformative; the robust figure rests on the attacks on "
                     "the auxiliary network")
    if not_run:
        notes.append(f"{len(not_run)} check(s) not run or superseded: " + ", ".join(c["name"] for c in not_run))
    if not failed and not not_run:
        notes.append("all checks pass")
    return notes
