"""`fastpurify sweep report DIR`: metrics from the merged per-sample records, written as a RobustBench-compatible
JSON superset (CONVENTIONS.md §2), a Markdown table and plots.

Accuracies per method: clean and robust, each as mean over the N draws (Avg.Rob), worst case (all N correct,
Wor.Rob) and majority vote (ties → lowest class index), with 95 % Wilson intervals on the n images; the same for
every attack of the ensemble alone (on its selection draws).  An incomplete sweep gives no report unless
`partial=True`, which marks everything PARTIAL.  The output depends on the records only: running the report twice
gives byte-identical files.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from ...grad import GRAD_LABELS
from .merge import Merged, completeness_text, merge


class IncompleteSweep(RuntimeError):
    """Missing or unexpected ids (or conflicting duplicates) where a final report was asked for."""


def wilson_ci(p: float, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson score interval for a proportion p measured on n samples."""
    if n == 0:
        return [0.0, 1.0]
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / d
    return [round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)]


def _vote(preds: list[int]) -> int:
    counts = Counter(preds)
    best = max(counts.values())
    return min(c for c, k in counts.items() if k == best)


def accuracies(preds: list[list[int]], correct: list[list[int]], labels: list[int]) -> dict:
    """mean / worst / majority over samples, with Wilson intervals (n = number of images)."""
    n = len(labels)
    if n == 0:
        return {"mean": None, "worst": None, "majority": None, "ci95": {}}
    mean = sum(sum(c) / len(c) for c in correct) / n
    worst = sum(all(c) for c in correct) / n
    majority = sum(_vote(p) == y for p, y in zip(preds, labels)) / n
    acc = {"mean": round(mean, 6), "worst": round(worst, 6), "majority": round(majority, 6)}
    return {**acc, "ci95": {k: wilson_ci(v, n) for k, v in acc.items()}}


def _curves(curves: list) -> dict:
    """Mean over samples, per PGD step, of the EOT accuracy of the current iterate ('curve') and of the best
    iterate so far ('best_curve'): evaluate-while-optimizing, on the attack's own draws."""
    if not curves or any(c is None for c in curves) or len({len(c) for c in curves}) != 1:
        return {"curve": None, "best_curve": None}
    n, best = len(curves), []
    for c in curves:
        run, out = 1.0, []
        for v in c:
            run = min(run, v)
            out.append(run)
        best.append(out)
    return {"curve": [round(sum(col) / n, 6) for col in zip(*curves)],
            "best_curve": [round(sum(col) / n, 6) for col in zip(*best)]}


def _pct(p) -> str | None:
    return None if p is None else f"{100 * p:.2f}"


def _unique(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out[0] if len(out) == 1 else out


def method_result(mg: Merged, method: str, partial: bool) -> dict:
    cfg = mg.stored["config"]
    recs = [mg.rows[method][i] for i in mg.ids if i in mg.rows[method]]
    labels = [r["label"] for r in recs]
    clean = accuracies([r["clean_preds"] for r in recs], [r["clean_correct"] for r in recs], labels)
    robust = accuracies([r["adv_preds"] for r in recs], [r["adv_correct"] for r in recs], labels)
    attacks = {}
    for a in cfg["attacks"]:
        k = a["name"]
        acc = accuracies([r["attacks"][k]["preds"] for r in recs], [r["attacks"][k]["correct"] for r in recs], labels)
        attacks[k] = {**acc, "wins": sum(r["winner"] == k for r in recs), "steps": a["steps"], "eot": a["eot"],
                      "step_size": a["step_size"], "loss": a["loss"], "grad_mode": a["grad"],
                      "grad_label": GRAD_LABELS[a["grad"]], "kind": a["kind"], "random_start": a["random_start"],
                      "best_iterate": a["best_iterate"], **_curves([r["attacks"][k].get("curve") for r in recs])}
    first = recs[0] if recs else {}
    n = len(recs)
    wall = sum(r["wall_s"] for r in recs)
    names = " + ".join(f"{a['name']} (PGD-{a['steps']} × EOT {a['eot']}, {a['loss']}, grad {a['grad']})"
                       for a in cfg["attacks"])
    mc = next(m for m in cfg["methods"] if m["label"] == method)
    return {
        # RobustBench model_info fields (percentages as strings)
        "clean_acc": _pct(clean["mean"]),
        "autoattack_acc": _pct(robust["mean"]),
        "autoattack_acc_is": ("NOT AutoAttack: robust accuracy (Avg.Rob) under the per-sample worst case of the "
                              f"attack ensemble '{cfg['ensemble']}', mean over N fresh purifications"),
        "external": "",
        "number_forward_passes": 1,
        "footnote": (f"Randomized defence ({mc['name']}); not a leaderboard entry. Ensemble: {names}. "
                     f"Robust accuracy re-evaluated with N = {cfg['n_reevals']} fresh purifications."
                     + (" PARTIAL: computed on an incomplete sweep." if partial else "")),
        "unreliable": partial,
        # the superset
        "method": method, "method_name": mc["name"], "method_config": mc,
        "protocol": first.get("protocol"), "n_examples": n, "n_reevals": cfg["n_reevals"],
        "clean": clean, "robust": robust,
        "avg_rob": robust["mean"], "wor_rob": robust["worst"], "maj_rob": robust["majority"],
        "ci95": {"clean_acc": clean["ci95"].get("mean"), "avg_rob": robust["ci95"].get("mean"),
                 "wor_rob": robust["ci95"].get("worst"), "maj_rob": robust["ci95"].get("majority")},
        "attacks": attacks,
        "grad_mode": {a["name"]: a["grad"] for a in cfg["attacks"]},
        "eot": {a["name"]: a["eot"] for a in cfg["attacks"]},
        "t_star_steps": first.get("t_star_steps"), "t_star_s": first.get("t_star_s"),
        "nfe": first.get("nfe_defense"), "nfe_defense": first.get("nfe_defense"),
        "nfe_attack": first.get("nfe_attack"), "nfe_eval": first.get("nfe_eval"),
        "wall_s": round(wall, 3), "s_per_image": round(wall / n, 4) if n else None,
        "dtype": _unique(r["dtype"] for r in recs) if recs else cfg["dtype"],
        "backend": _unique(r["backend"] for r in recs) if recs else None,
        "seeds": first.get("seeds"), "manifest_sha256": first.get("manifest_sha256"),
        "versions": _unique(r["versions"] for r in recs) if recs else None,
        "gpu": _unique(r["gpu"] for r in recs) if recs else None,
        "missing": len(mg.missing[method]),
    }


def build_report(mg: Merged, partial: bool) -> dict:
    cfg = mg.stored["config"]
    from .shards import manifest_sha256

    return {
        "status": "PARTIAL" if partial else "COMPLETE", "partial": partial,
        "config_id": mg.config_id, "manifest_sha256": manifest_sha256(mg.ids), "n_manifest": len(mg.manifest),
        "dataset": cfg["data"], "model": cfg["model"],
        "threat_model": {"norm": cfg["norm"], "eps": cfg["eps"], "scale": "[0, 1]",
                         "white_box": "purifier weights, sampler and noise model known to the attacker"},
        "ensemble": {"name": cfg["ensemble"], "attacks": cfg["attacks"]},
        "n_reevals": cfg["n_reevals"], "seed": cfg["seed"],
        "completeness": {m: {"done": len(mg.rows[m]), "missing": mg.missing[m], "duplicates_resolved":
                             len(mg.duplicates[m])} for m in mg.methods},
        "results": [method_result(mg, m, partial) for m in mg.methods],
    }


def _fmt(p) -> str:
    return "–" if p is None else f"{100 * p:.1f}"


def markdown(report: dict) -> str:
    tm, partial = report["threat_model"], report["partial"]
    title = "PARTIAL — " if partial else ""
    summary = (f"{report['n_manifest']} images ({report['dataset']['dataset']}/{report['dataset']['split']}), "
               f"{tm['norm']} ε = {tm['eps']:g}, ensemble `{report['ensemble']['name']}`, "
               f"N = {report['n_reevals']} fresh purifications, manifest sha256 `{report['manifest_sha256'][:16]}…`")
    lines = [f"# {title}Sweep {report['config_id']}", "", summary, ""]
    if partial:
        lines += ["**PARTIAL: computed on an incomplete sweep; not a final result.**", ""]
    attack_names = [a["name"] for a in report["ensemble"]["attacks"]]
    head = ["method", "n", "clean", "robust (mean)", "95 % CI", "worst", "majority", *attack_names, "t*", "NFE",
            "s/img"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        ci = r["ci95"]["avg_rob"]
        cells = [r["method"], str(r["n_examples"]), _fmt(r["clean"]["mean"]), _fmt(r["avg_rob"]),
                 "–" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}", _fmt(r["wor_rob"]), _fmt(r["maj_rob"]),
                 *[_fmt(r["attacks"][k]["mean"]) for k in attack_names],
                 "–" if r["t_star_steps"] is None else str(r["t_star_steps"]), str(r["nfe"]),
                 "–" if r["s_per_image"] is None else f"{r['s_per_image']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    legend = ("Accuracies in %: clean and robust are means over the N draws; worst = all N correct; majority = "
              "vote over N. Robust = per-sample worst case over the ensemble (selected on separate draws, reported "
              "on fresh ones); attack columns = each attack alone. 95 % CI: Wilson on n images.")
    lines += ["", legend,
              f"Protocol: {report['results'][0]['protocol'] if report['results'] else '–'}"]
    for name, path in sorted(report.get("plots", {}).items()):
        lines.append(f"![{name}]({path})")
    for g in report.get("grids", []):
        lines += ["", f"Sample grid `{g['file']}` ({g['method']}; rows: clean / adversarial / purified):",
                  "label: " + " ".join(str(v) for v in g["labels"]),
                  "clean pred: " + " ".join(str(v) for v in g["clean_preds"]),
                  "adversarial pred (first fresh draw): " + " ".join(str(v) for v in g["adv_preds"])]
    return "\n".join(lines) + "\n"


def write_report(out, *, partial: bool = False, dest=None) -> dict:
    """Merge, check completeness and write report.json, report.md and the plots into dest (default
    DIR/report).  Raises IncompleteSweep when the sweep is incomplete (unless partial) or has conflicts."""
    mg = merge(out)
    if mg.conflicts:
        raise IncompleteSweep("records of the same (method, sample) disagree — non-deterministic results or a "
                              "changed environment:\n" + completeness_text(mg))
    if not mg.complete and not partial:
        raise IncompleteSweep(f"sweep {mg.config_id} is incomplete (use --partial for a PARTIAL report):\n"
                              + completeness_text(mg))
    partial = not mg.complete
    dest = Path(dest) if dest is not None else Path(out) / "report"
    dest.mkdir(parents=True, exist_ok=True)
    report = build_report(mg, partial)
    from .plots import sample_grids, write_plots

    report["plots"] = write_plots(report, dest)
    report["grids"] = sample_grids(mg, dest)
    (dest / "report.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (dest / "report.md").write_text(markdown(report))
    return report
