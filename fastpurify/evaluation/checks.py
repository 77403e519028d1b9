"""Masking checks (docs/EVALUATION.md rule 6): the classic signs of gradient masking, computed from the protocol's rows
and attack statistics.  Each check is a record {name, passed, value, threshold, detail}; a failed one is printed in
every report, never hidden."""

from __future__ import annotations

import torch

from .stats import half_width


def _check(name: str, passed, value, threshold, detail: str) -> dict:
    return {"name": name, "passed": passed, "value": value, "threshold": threshold, "detail": detail}


def escalated_name(name: str, steps: int) -> str:
    """The name of the rerun with 2× the steps of an attack that had not converged (ProtocolConfig.escalate)."""
    return f"{name}@{2 * steps}"


def convergence_drop(half_steps_mean: float, mean: float, n: int) -> tuple[float, float]:
    """(accuracy with half the steps minus with all of them, the CI half-width the fall must stay within)."""
    return half_steps_mean - mean, half_width(mean, n)


@torch.no_grad()
def masking_checks(defence, attacks, rows, stats_by_name, large, cfg) -> list[dict]:
    """The classic signs of gradient masking (docs/EVALUATION.md rule 6), each a named record; passed None = skipped."""
    out = []
    specs = {a.name: a for a in attacks}
    ran = {r["attack"]: r for r in rows if "skipped" not in r}
    exact = [n for n in ran if specs[n].exact]
    # 1. Input elements with an exactly zero gradient at the first step of every exact attack.
    if exact:
        frac = max(stats_by_name[n]["zero_grad_elem_frac_max"] for n in exact)
        out.append(_check("zero_gradient_elements", frac <= cfg.zero_grad_tol, frac, cfg.zero_grad_tol,
                          "largest fraction of input elements with an exactly zero gradient in an exact attack"))
    # 2. No transfer / BPDA / component attack may beat the best exact attack by more than the interval.
    full_rows = [n for n in exact if not specs[n].cascade]
    if defence.randomized and full_rows:
        best = min(full_rows, key=lambda n: ran[n]["mean"])
        p, n_ex = ran[best]["mean"], ran[best]["n"]
        slack = half_width(p, n_ex)
        for name, row in ran.items():
            if specs[name].transfer and not specs[name].cascade:
                diff = row["mean"] - p
                out.append(_check(f"{name}_not_stronger_than_exact", diff >= -slack, round(diff, 4),
                                  round(-slack, 4), f"{name} accuracy minus {best} accuracy (exact gradients); "
                                  "below -CI half-width = the exact attack is masked"))
    # 3. Convergence: doubling the steps (steps // 2 → steps, same seeds) must not lower the reported accuracy by
    #    more than the interval; if it does, more steps are needed before the figure means anything.
    for name in exact:
        half = stats_by_name[name].get("half_steps")
        if half is None:
            continue
        drop, tol = convergence_drop(half["mean"], ran[name]["mean"], ran[name]["n"])
        steps = ran[name]["spec"]["steps"]
        # escalated (ProtocolConfig.escalate): the rerun with 2× the steps carries the check instead
        after = escalated_name(name, steps) if drop > tol and escalated_name(name, steps) in specs else None
        out.append(_check(f"{name}_converged", None if after else drop <= tol, round(drop, 4), round(tol, 4),
                          f"accuracy with {steps // 2} steps minus with {steps} (same draws); above the CI "
                          "half-width = not converged" + (f" (rerun as {after}: see its check)" if after else "")))
    # 4. Large ε with a plain CE attack → ~0 %.
    if large is not None:
        out.append(_check("large_eps_near_zero", large["mean"] <= cfg.near_zero, large["mean"], cfg.near_zero,
                          f"plain CE attack, exact gradients, eps {large['eps']} on {large['n_examples']} samples"))
    # 5. The undefended classifier on the 'blind' candidates → ~0 %.
    blind = [n for n in ran if specs[n].kind == "blind"]
    if defence.randomized and blind:
        acc = ran[blind[0]]["undefended_acc"]
        robust = getattr(defence, "robust_classifier", False)
        out.append(_check("undefended_near_zero", None if robust else acc <= cfg.near_zero, acc, cfg.near_zero,
                          "the classifier alone on the blind-attack images"
                          + (" (skipped: an adversarially trained classifier)" if robust else "")))
    # 6. Components an adaptive attacker targets (an auxiliary network, attack-side variants) must be attacked
    #    through (docs/EVALUATION.md rule 4); without, the figure is an upper bound of unknown slack.
    if defence.aux is not None or defence.variants:
        kinds, variants = {a.kind for a in attacks}, {a.variant for a in attacks}
        missing = [] if defence.aux is None or kinds & {"aux", "joint"} else ["aux or joint (the auxiliary network)"]
        missing += [f"pgd on variant {v!r}" for v in sorted(defence.variants) if v not in variants]
        out.append(_check("adaptive_attacks_for_components", not missing, len(missing), 0,
                          "attacks missing from the ensemble: " + (", ".join(missing) or "none")))
    return out
