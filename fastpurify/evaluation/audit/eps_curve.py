"""Robust accuracy against the radius (report.json 'eps_curve', accuracy_vs_eps.png, report.md's ε table).

After the protocol's evaluation at ε, one attack is rerun at each radius `multiple × ε` of AuditSettings.eps_curve on
the first `eps_curve_n` images and re-evaluated on the protocol's N report draws (the same draws as every other row:
fresh for the attack, paired across radii), with 95 % Wilson intervals over the images.  Two points come free from
the protocol, on the same images and draws: ε = 0 (clean accuracy) and ε itself, which is the *ensemble's* figure
(per-sample worst case over every attack), not the single attack's.

Which attack: the exact attack of the ensemble with the lowest robust accuracy at ε (escalated reruns included; on
ties the first in ensemble order, the cheaper).  That is the strongest single attack measured on this very
defence; APGD-CE by rule would ignore that measurement.  A cascaded attack is not compared: its row covers only
the samples still standing.  Off ε a single attack is weaker than the ensemble, so each point there is an upper
bound of what the ensemble would give.

A larger ball contains the smaller one, so accuracy must not rise with ε; 'monotone' records whether each point is at
most the upper end of the previous (smaller-ε) point's interval.  A rise beyond that is a sign the attack misses the
worst case at the larger radius; it is said in the report, not in the verdict (the verdict is the protocol's).
"""

from __future__ import annotations

from itertools import pairwise

import torch

from ...attacks.adaptive import AttackSpec, Defence, run_attack
from ...attacks.pgd import reevaluate
from ..protocol import ProtocolConfig
from ..stats import summarize


def strongest_exact(rows: list[dict]) -> AttackSpec | None:
    """The exact, non-cascaded attack row with the lowest mean robust accuracy; on ties the first in ensemble order
    (the cheaper: an escalated rerun, at twice the steps, comes after its original)."""
    ran = [r for r in rows if "skipped" not in r and r["spec"]["exact"] and not r["spec"]["cascade"]]
    if not ran:
        return None
    best = min(ran, key=lambda r: r["mean"])
    return AttackSpec(**{k: v for k, v in best["spec"].items() if k != "exact"})


def _point(eps: float, multiple: float, attack: str, preds: torch.Tensor, y: torch.Tensor, **extra) -> dict:
    s = summarize(preds, y)
    return {"eps": round(eps, 6), "multiple": multiple, "attack": attack, "mean": round(s["mean"], 4),
            "interval": s["mean_ci95"], "n": s["n"], "draws": s["draws"], **extra}


def eps_curve(defence: Defence, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, result: dict,
              cfg: ProtocolConfig, multiples: tuple[float, ...], n_images: int, log=None) -> dict:
    """The curve as report.json carries it: {'attack', 'n', 'draws', 'points': [{eps, multiple, attack, mean,
    interval, n, draws}, …] sorted by ε, 'monotone', 'rule'}; {'skipped': why} when off or when no exact attack
    ran.  result: evaluate's dict (its per-sample records give the ε = 0 and ε points)."""
    if not multiples:
        return {"skipped": "eps_curve = (): off"}
    spec = strongest_exact(result["attacks"])
    if spec is None:
        return {"skipped": "no exact attack ran on every sample: nothing to rerun at other radii"}
    k = min(n_images, len(x))
    xs, ys, ks = x[:k], y[:k], ids[:k]
    records = result["records"][:k]
    points = [_point(0.0, 0.0, "clean", torch.tensor([r["clean_preds"] for r in records]), ys),
              _point(cfg.eps, 1.0, "ensemble", torch.tensor([r["adv_preds"] for r in records]), ys)]
    fwd = defence.forward_fn()
    for m in multiples:
        eps = m * cfg.eps
        if log:
            log(f"{defence.name}: eps curve, {spec.name} at {m:g} × eps = {eps:g} on {k} samples")
        x_adv, st = run_attack(defence, spec, xs, ys, ks, eps=eps, norm=cfg.norm, run_seed=cfg.seed,
                               eot_chunk=cfg.eot_chunk)
        preds = torch.tensor(reevaluate(fwd, x_adv, ys, ks, result["n_reevals"], run_seed=cfg.seed)["preds"])
        points.append(_point(eps, m, spec.name, preds, ys, seconds=st["seconds"]))
    points.sort(key=lambda p: (p["eps"], p["attack"] != "ensemble"))
    rises = [f"{b['eps']:g} ({b['mean']:.3f} > {a['interval'][1]:.3f})" for a, b in pairwise(points)
             if b["mean"] > a["interval"][1]]
    return {"attack": spec.name, "attack_spec": spec.as_dict(), "n": k, "draws": result["n_reevals"],
            "points": points, "monotone": not rises, "rises": rises,
            "rule": "each point ≤ the upper end of the 95 % Wilson interval of the point at the next smaller ε",
            "why_this_attack": "the exact attack with the lowest robust accuracy at ε (on ties the first in "
                               "ensemble order); off ε a single attack, so an upper bound of the ensemble there; the "
                               "point at ε is the ensemble's, the point at 0 the clean accuracy, all on the same "
                               "images and draws"}


def markdown_lines(curve: dict) -> list[str]:
    """report.md's section: one row per radius."""
    lines = ["", "## robust accuracy against ε", ""]
    if "skipped" in curve:
        return lines + [f"not drawn: {curve['skipped']}"]
    lines += [(f"{curve['attack']} rerun at each radius on the first {curve['n']} images, {curve['draws']} report "
               f"draw(s) each; the row at ε itself is the ensemble's, the row at 0 the clean accuracy. Monotone up "
               f"to noise: {'yes' if curve['monotone'] else 'NO, rises at ε = ' + ', '.join(curve['rises'])}"), "",
              "| ε | × ε | attack | robust mean % [95 % Wilson] | n |", "|---|---|---|---|---|"]
    for p in curve["points"]:
        lo, hi = p["interval"]
        lines.append(f"| {p['eps']:g} | {p['multiple']:g} | {p['attack']} | {100 * p['mean']:.1f} "
                     f"[{100 * lo:.1f}, {100 * hi:.1f}] | {p['n']} |")
    return lines
