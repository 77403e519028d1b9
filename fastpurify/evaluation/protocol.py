"""The evaluation protocol (docs/EVALUATION.md), one code path for demo, compare and sweeps.

    clean accuracy on N fresh draws
    for each attack of the ensemble: its candidate x_adv; cascaded attacks run after the others, on every sample
    except those already at the floor (chosen candidate wrong on every selection and report draw: see _floor)
    per sample, the worst candidate (clean x included) on S *selection* draws (fewest correct, then lowest margin)
    robust accuracy of the chosen candidates on N fresh *report* draws (never the selection draws): mean / worst
    (all N correct) / majority (a tie is not robust), with Wilson intervals; per-attack rows on the same draws
    masking checks (checks.py), each with value and threshold: zero-gradient elements, the purifier's gradient
    against finite differences, nothing stronger than exact PGD/APGD on the pipeline (paired), convergence of
    the exact attacks (paired), large ε → ~0 % and undefended classifier → ~0 % (clean-correct samples), every
    component attacked
    (cfg.escalate > 0: an exact attack whose paired convergence check fails is rerun at once with twice the steps,
    as an extra member of the ensemble named 'name@steps'; its own convergence check says whether that was enough)

Randomness: every draw is keyed by (run seed, sample id, stream, index), so a sample's result does not depend on
the batch it was evaluated in; report draws share their seeds across candidates (paired comparisons).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch

from ..attacks.adaptive import AttackSpec, Defence, run_attack
from ..attacks.pgd import reevaluate
from .checks import check_notes, converged, escalated_name, gradient_fidelity, masking_checks
from .stats import PAIRED_MARGIN, paired_drop, summarize

PROTOCOL = ("per-sample worst case over an attack ensemble, chosen on S selection draws, reported on N fresh "
            "purifications (evaluate-after-optimizing)")


# An exact attack whose paired convergence check fails is rerun with 2× the steps, at most this often by default
# (the demo and the audit; correctness before running time: an escalation costs minutes on a CPU).
ESCALATE = 2


@dataclass(frozen=True)
class ProtocolConfig:
    eps: float
    norm: str = "linf"
    n_reevals: int = 5             # N report draws per candidate
    n_select: int | None = None    # S selection draws per candidate (default N)
    seed: int = 0
    eot_chunk: int | None = None   # most rows per forward call inside attacks (memory only)
    large_eps: float | None = 0.5  # the large-ε check (None: skipped) ...
    large_eps_n: int = 16          # ... on the first k samples ...
    large_eps_steps: int = 10      # ... with a plain CE attack, exact gradients
    near_zero: float = 0.05        # threshold of the '→ ~0 %' checks
    zero_grad_tol: float = 0.01    # most input elements with an exactly zero first gradient
    paired_margin: float = PAIRED_MARGIN  # paired checks: 'ok' = upper end of the 95 % interval of the drop ≤ this
    fd_n: int = 4                  # the finite-difference check of the purifier's gradient: samples ...
    fd_h: float = 1e-3             # ... central-difference step (pixels within h of 0 or 1 are not moved) ...
    fd_tol: float = 0.05           # ... and the largest relative error of autograd against it
    escalate: int = 0              # an exact attack still falling at full steps is rerun with 2× steps, ≤ this often

    def __post_init__(self):
        if not self.eps >= 0:
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        if self.escalate < 0:
            raise ValueError(f"escalate must be >= 0, got {self.escalate}")
        if self.n_reevals < 1 or (self.n_select is not None and self.n_select < 1):
            raise ValueError(f"need n_reevals >= 1 and n_select >= 1, got {self.n_reevals}, {self.n_select}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {self.norm!r}; expected 'linf' or 'l2'")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Worst:
    """The per-sample worst candidate so far (judged on selection draws)."""

    acc: torch.Tensor
    margin: torch.Tensor
    winner: list
    x: torch.Tensor
    report: torch.Tensor  # (B, N) report-draw predictions of the chosen candidate
    records: list = field(default_factory=list)

    def offer(self, name: str, rows: torch.Tensor, x_adv: torch.Tensor, sel: dict, rep_preds: torch.Tensor) -> None:
        acc = torch.tensor(sel["correct"], dtype=torch.float64).mean(1)
        margin = torch.tensor(sel["margin"], dtype=torch.float64)
        better = (acc < self.acc[rows]) | ((acc == self.acc[rows]) & (margin < self.margin[rows]))
        for j, b in enumerate(rows.tolist()):
            # margins rounded: batched convolutions differ in the last bits between batch compositions
            self.records[b]["attacks"][name] = {"sel_acc": float(acc[j]), "sel_margin": round(float(margin[j]), 6),
                                                "preds": rep_preds[j].tolist()}
            if better[j]:
                self.acc[b], self.margin[b], self.winner[b] = acc[j], margin[j], name
                self.x[b], self.report[b] = x_adv[j], rep_preds[j]


def _floor(worst: _Worst, y: torch.Tensor) -> torch.Tensor:
    """Samples at the floor: the chosen candidate is wrong on every selection and every report draw.  Nothing an
    attack finds can lower such a sample's reported accuracy (it is 0); skipping it can only keep it at 0, where
    running an attack could only hand the choice to a candidate that is right on some report draw.  So skipping
    favours the attacker, never the defence."""
    return (worst.acc == 0) & (worst.report != y[:, None]).all(1)


def _order(attacks: list[AttackSpec]) -> list[AttackSpec]:
    """Cascaded attacks after every other one (stable order), so a sample at the floor stays there: no later
    attack runs on it and its chosen candidate cannot change."""
    return [a for a in attacks if not a.cascade] + [a for a in attacks if a.cascade]


def _convergence(fwd, half, y, ids, rep_correct, cfg, floor: int = 0) -> tuple[dict, torch.Tensor, dict]:
    """The same attack with half the steps on the same report draws: its summary, per-sample predictions and the
    paired drop (half − full) with its 95 % interval, over all samples (floor: those a cascaded attack skipped)."""
    N = rep_correct.shape[1]
    preds = torch.tensor(reevaluate(fwd, half, y, ids, N, run_seed=cfg.seed)["preds"])
    return summarize(preds, y), preds, paired_drop((preds == y[:, None]).int(), rep_correct, floor=floor)


def evaluate(defence: Defence, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, attacks: list[AttackSpec],
             cfg: ProtocolConfig, *, log=None) -> dict:
    """Run the protocol on one defence.  Returns a JSON-ready dict (plus 'x_adv': the chosen candidates) with the
    clean, per-attack and ensemble rows, per-sample records, masking checks and diagnostics."""
    log = log or (lambda msg: None)
    if x.shape[0] == 0:
        raise ValueError("evaluate needs at least one sample")
    names = [a.name for a in attacks]
    if len(set(names)) != len(names):
        raise ValueError(f"attack names must be unique, got {names}")
    t_start = time.perf_counter()
    N = cfg.n_reevals if defence.randomized else 1
    S = (cfg.n_select or cfg.n_reevals) if defence.randomized else 1
    fwd = defence.forward_fn()

    # Clean accuracy under the same stochastic protocol; the clean image is the first candidate.
    clean = reevaluate(fwd, x, y, ids, N, run_seed=cfg.seed)
    clean_preds = torch.tensor(clean["preds"])
    nfe_defense = defence.nfe
    clean_sel = reevaluate(fwd, x, y, ids, S, run_seed=cfg.seed, selection=True)
    worst = _Worst(acc=torch.tensor(clean_sel["correct"], dtype=torch.float64).mean(1),
                   margin=torch.tensor(clean_sel["margin"], dtype=torch.float64), winner=["clean"] * len(x),
                   x=x.detach().clone(), report=clean_preds.clone(),
                   records=[{"id": int(i), "label": int(t), "clean_preds": p, "attacks": {}}
                            for i, t, p in zip(ids.tolist(), y.tolist(), clean["preds"])])
    rows, stats_by_name = [], {}
    queue, attacks, escalations = _order(list(attacks)), [], {}
    while queue:
        spec = queue.pop(0)
        attacks.append(spec)
        row, st, more = _run_one(defence, spec, x, y, ids, cfg, worst, S, N, log, escalations)
        if more is not None:
            queue.insert(0, more)
        if st is not None:
            stats_by_name[spec.name] = st
        rows.append(row)

    ensemble = summarize(worst.report, y)
    ensemble["winners"] = {n: worst.winner.count(n) for n in ["clean", *(a.name for a in attacks)]
                           if worst.winner.count(n)}
    for rec, w, preds in zip(worst.records, worst.winner, worst.report.tolist()):
        rec.update(winner=w, adv_preds=preds, clean_correct=[int(p == rec["label"]) for p in rec["clean_preds"]],
                   adv_correct=[int(p == rec["label"]) for p in preds])
    result = {
        "defence": defence.describe(), "protocol": PROTOCOL, "config": cfg.as_dict(), "n_examples": len(x),
        "n_reevals": N, "n_select": S, "nfe_defense": nfe_defense,
        "nfe_attack": sum(st["nfe_attack"] or 0 for st in stats_by_name.values()),
        "clean": summarize(clean_preds, y), "attacks": rows, "ensemble": ensemble,
    }
    result["diagnostics"] = _diagnostics(defence, worst, y)
    result["large_eps"] = _large_eps(defence, x, y, ids, clean_preds, cfg, log)
    fidelity = gradient_fidelity(defence, x, ids, cfg) if any(a.reference for a in attacks) else None
    result["checks"] = masking_checks(defence, attacks, rows, stats_by_name, result["large_eps"], cfg,
                                      records=worst.records, fidelity=fidelity)
    result["notes"] = check_notes(result["checks"])
    result["records"] = worst.records
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    result["x_adv"] = worst.x
    return result


def _run_one(defence, spec, x, y, ids, cfg, worst, S, N, log, escalations):
    """One attack of the ensemble: (its row, its stats or None, the escalated rerun to queue next or None)."""
    fwd = defence.forward_fn()
    floor = _floor(worst, y) if spec.cascade else torch.zeros(len(x), dtype=torch.bool)
    active = (~floor).nonzero()[:, 0]
    row = {"attack": spec.name, "spec": spec.as_dict(), "n_attacked": int(active.numel()),
           "n_skipped": int(floor.sum()),
           "why": ("cascaded: every sample except those already wrong on every selection and report draw"
                   if spec.cascade else "every sample")}
    if active.numel() == 0:
        return {**row, "skipped": "every sample already wrong on every selection and report draw"}, None, None
    log(f"{defence.name}: {spec.name} on {active.numel()} samples")
    x_adv, st = run_attack(defence, spec, x[active], y[active], ids[active], eps=cfg.eps, norm=cfg.norm,
                           run_seed=cfg.seed, eot_chunk=cfg.eot_chunk)
    ya, ia = y[active], ids[active]
    sel = reevaluate(fwd, x_adv, ya, ia, S, run_seed=cfg.seed, selection=True)
    rep_preds = torch.tensor(reevaluate(fwd, x_adv, ya, ia, N, run_seed=cfg.seed)["preds"])
    summary = summarize(rep_preds, ya)
    worst.offer(spec.name, active, x_adv, sel, rep_preds)
    half = st.pop("half_steps_x_adv", None)
    more = None
    if spec.exact and half is not None:  # the same attack with half the steps, on the same report draws
        st["half_steps"], half_preds, drop = _convergence(fwd, half, ya, ia, (rep_preds == ya[:, None]).int(), cfg,
                                                          floor=int(floor.sum()))
        st["half_steps"]["paired_drop"] = drop
        for j, b in enumerate(active.tolist()):
            worst.records[b]["attacks"][spec.name]["half_preds"] = half_preds[j].tolist()
        if not converged(drop, cfg) and escalations.get(spec.name, 0) < cfg.escalate:  # 2× the steps next
            more = replace(spec, name=escalated_name(spec.name, spec.steps), steps=2 * spec.steps)
            escalations[more.name] = escalations.get(spec.name, 0) + 1
            log(f"{defence.name}: {spec.name} not converged (drop {drop['drop']:.3f}, 95 % upper "
                f"{drop['ci95'][1]:.3f} > {cfg.paired_margin}): {more.name} next")
    if spec.kind == "blind":  # the undefended classifier on its own adversarial images, clean-correct samples only
        with torch.no_grad():
            ok = defence.classifier(x[active]).argmax(1) == ya
            row["undefended_n"] = int(ok.sum())
            row["undefended_acc"] = (float((defence.classifier(x_adv[ok]).argmax(1) == ya[ok]).float().mean())
                                     if ok.any() else None)
    return {**row, **summary, "stats": st}, st, more


@torch.no_grad()
def _diagnostics(defence: Defence, worst: _Worst, y: torch.Tensor) -> dict:
    """For a defence with an auxiliary network: how often the purified prediction equals argmax φ(x_adv) — at 100 %
    the defence's decision is φ's, and the purifier adds nothing an attack on φ would not break."""
    if defence.aux is None:
        return {}
    aux_pred = defence.aux(worst.x).argmax(1)
    agree = worst.report == aux_pred[:, None]
    return {"aux_agreement": float(agree.float().mean()), "aux_agreement_count": [int(agree.sum()), agree.numel()],
            "aux_accuracy_on_chosen": float((aux_pred == y).float().mean())}


def _large_eps(defence: Defence, x, y, ids, clean_preds, cfg: ProtocolConfig, log) -> dict | None:
    """The large-ε check on the first large_eps_n samples the defence gets right on some clean report draw (a
    sample it never classifies right would count as broken whatever the attack)."""
    ok = (clean_preds == y[:, None]).any(1).nonzero()[:, 0][:cfg.large_eps_n]
    if not (defence.randomized and cfg.large_eps and ok.numel()):
        return None
    large = large_eps_attack(defence, x[ok], y[ok], ids[ok], cfg, log)
    large.pop("preds")
    large["selected"] = "clean-correct (right on at least one clean report draw)"
    return large


def large_eps_attack(defence: Defence, x, y, ids, cfg: ProtocolConfig, log=None) -> dict:
    """A plain CE attack with exact gradients at the large ε cfg.large_eps (almost any image is reachable) on the
    given samples: must reach ~0 %.  Per-sample 'preds' (min(N, 2) report draws) let sweeps pool it over batches."""
    spec = AttackSpec("large-eps-ce", steps=cfg.large_eps_steps, eot=1, random_start=False)
    if log:
        log(f"{defence.name}: large-eps check (eps {cfg.large_eps}) on {len(x)} samples")
    x_adv, st = run_attack(defence, spec, x, y, ids, eps=cfg.large_eps, norm=cfg.norm, run_seed=cfg.seed,
                           eot_chunk=cfg.eot_chunk)
    rep = reevaluate(defence.forward_fn(), x_adv, y, ids, min(cfg.n_reevals, 2), run_seed=cfg.seed)
    return {"eps": cfg.large_eps, "n_examples": len(x), "attack": spec.as_dict(), "mean": rep["mean"],
            "worst": rep["worst"], "majority": rep["majority"], "seconds": st["seconds"], "preds": rep["preds"]}
