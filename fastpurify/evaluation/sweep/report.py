"""`fastpurify sweep report DIR`: metrics from the merged per-sample records, written as a RobustBench-compatible
JSON superset (docs/CONVENTIONS.md §2.2), a Markdown table and plots.

Accuracies per method (`fastpurify.evaluation.stats.summarize`): clean and robust, each as mean over the N draws
(Avg.Rob), worst case (all N correct, Wor.Rob) and majority vote (ties → lowest class index), with 95 % Wilson
intervals on the n images; the same for every attack of the ensemble alone (on the report draws, over the samples
it attacked).  The protocol's masking checks are recomputed over the whole sweep from the records and the batch
lines (`fastpurify.evaluation.checks.masking_checks`), the large-ε check from the records of the first
`large_eps_n` images.  An incomplete sweep gives no report unless
`partial=True`, which marks everything PARTIAL.  The output depends on the files only: running the report twice
gives byte-identical files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...grad import GRAD_LABELS
from ..checks import masking_checks
from ..defences import traits
from ..protocol import ProtocolConfig
from ..stats import summarize, wilson_ci
from .config import SCHEMA, AttackConfig, ConfigError
from .data import label_rule
from .merge import Merged, completeness_text, merge
from .records import read_batches
from .shards import manifest_sha256

__all__ = ["IncompleteSweep", "accuracies", "build_report", "markdown", "wilson_ci", "write_report"]


class IncompleteSweep(RuntimeError):
    """Missing or unexpected ids (or conflicting duplicates) where a final report was asked for."""


def accuracies(preds: list[list[int]], labels: list[int]) -> dict:
    """mean / worst / majority over the images (N draws each), with 95 % Wilson intervals on the n images."""
    if not labels:
        return {"n": 0, "mean": None, "worst": None, "majority": None, "ci95": {}}
    s = summarize(torch.tensor(preds), torch.tensor(labels))
    acc = {k: round(s[k], 6) for k in ("mean", "worst", "majority")}
    return {"n": s["n"], **acc, "ci95": {k: s[f"{k}_ci95"] for k in acc}}


def _attack_stats(batches: list[dict], name: str) -> dict | None:
    """Masking-check statistics of one attack over the batch lines: the worst zero-gradient fraction, the
    best-iterate curve and the undefended accuracy averaged with the number of samples attacked as weights."""
    rows = [b["attacks"][name] for b in batches if name in b["attacks"] and b["attacks"][name].get("best_acc")]
    if not rows:
        return None
    weight = sum(r["n_attacked"] for r in rows)
    lengths = {len(r["best_acc"]) for r in rows}
    curve = ([round(sum(r["n_attacked"] * r["best_acc"][k] for r in rows) / weight, 6) for k in range(lengths.pop())]
             if len(lengths) == 1 else None)
    und = [r for r in rows if r.get("undefended_acc") is not None]
    return {"zero_grad_elem_frac_max": max(r["zero_grad_elem_frac_max"] for r in rows), "best_acc": curve,
            "undefended_acc": (round(sum(r["n_attacked"] * r["undefended_acc"] for r in und) /
                                     sum(r["n_attacked"] for r in und), 6) if und else None)}


def _large_eps(recs: list[dict], cfg: dict) -> dict | None:
    """The protocol's large-ε check pooled over the records that carry it (the first large_eps_n images)."""
    on = [r for r in recs if "large_eps_preds" in r]
    if not on:
        return None
    s = summarize(torch.tensor([r["large_eps_preds"] for r in on]), torch.tensor([r["label"] for r in on]))
    return {"eps": cfg["large_eps"], "n_examples": len(on), "mean": s["mean"], "worst": s["worst"],
            "majority": s["majority"]}


def _checks(mc: dict, cfg: dict, attacks: dict, stats: dict, large: dict | None, recs: list[dict],
            fidelity: list[dict]) -> list[dict]:
    """The protocol's masking checks over the whole sweep of one method (paired checks from the records)."""
    specs = [AttackConfig(**a).to_spec() for a in cfg["attacks"] if a["name"] in attacks]
    rows = [{"attack": k, "mean": a["mean"], "n": a["n"], "undefended_acc": (stats.get(k) or {}).get("undefended_acc")}
            for k, a in attacks.items() if a["n"] and stats.get(k) and stats[k]["best_acc"]]
    ran = {r["attack"] for r in rows}
    defence = traits(mc["name"])
    pcfg = ProtocolConfig(eps=cfg["eps"], norm=cfg["norm"], n_reevals=cfg["n_reevals"])
    checks = (masking_checks(defence, specs, rows, {k: stats[k] for k in ran}, large, pcfg, records=recs)
              if specs else [])
    if defence.randomized and large is None:
        why = ("large_eps = 0 in the config" if not cfg["large_eps"] else
               f"no clean-correct sample among the first {cfg['large_eps_n']} images")
        checks.append({"name": "large_eps_near_zero", "passed": None, "value": None, "threshold": pcfg.near_zero,
                       "detail": f"not run: {why}", "category": "masking", "reason": None})
    checks += _fidelity(specs, fidelity, pcfg)
    return checks


def _fidelity(specs, fidelity: list[dict], pcfg) -> list[dict]:
    """The finite-difference check of the exact gradient: the worst batch's; 'not run' (with why) where the method
    has an exact reference attack but no batch carried the check."""
    if fidelity:
        worst = max(fidelity, key=lambda c: c["value"])
        return [{**worst, "passed": all(c["passed"] for c in fidelity),
                 "detail": f"{worst['detail']} (the worst of {len(fidelity)} batches)"}]
    if any(s.reference for s in specs):
        return [{"name": "gradient_matches_finite_differences", "passed": None, "value": None,
                 "threshold": pcfg.fd_tol, "category": "masking", "reason": None,
                 "detail": "not run: no batch line carries the finite-difference check (records written before it "
                           "existed, or a defence without a purifier)"}]
    return []


def _pct(p) -> str | None:
    return None if p is None else f"{100 * p:.2f}"


def _unique(values):
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out[0] if len(out) == 1 else out


def method_result(mg: Merged, method: str, partial: bool, batches: list[dict]) -> dict:
    cfg = mg.stored["config"]
    mc = next(m for m in cfg["methods"] if m["label"] == method)
    recs = [mg.rows[method][i] for i in mg.ids if i in mg.rows[method]]
    labels = [r["label"] for r in recs]
    clean = accuracies([r["clean_preds"] for r in recs], labels)
    robust = accuracies([r["adv_preds"] for r in recs], labels)
    mine = [b for b in batches if b["method"] == method]
    stats, attacks = _attack_results(cfg, recs, mine)
    first = recs[0] if recs else {}
    n = len(recs)
    wall = sum(r["wall_s"] for r in recs)
    large = _large_eps(recs, cfg)
    checks = _checks(mc, cfg, attacks, stats, large, recs, [b["fidelity"] for b in mine if b.get("fidelity")])
    failed = [c["name"] for c in checks if c["passed"] is False]
    names = " + ".join(f"{k} ({a['kind']} {a['steps']} steps × EOT {a['eot']}, {a['loss']}, grad {a['grad_mode']})"
                       for k, a in attacks.items())
    return {
        # RobustBench model_info fields (percentages as strings)
        "clean_acc": _pct(clean["mean"]),
        "autoattack_acc": _pct(robust["mean"]),
        "autoattack_acc_is": ("NOT AutoAttack: robust accuracy (Avg.Rob) under the per-sample worst case of the "
                              f"attack ensemble '{cfg['ensemble']}', mean over N fresh purifications"),
        "external": "",
        "number_forward_passes": 1,
        "footnote": (f"Defence {method} ({mc['name']}); not a leaderboard entry. Ensemble: {names}. "
                     f"Robust accuracy re-evaluated with N = {cfg['n_reevals']} fresh purifications."
                     + (" PARTIAL: computed on an incomplete sweep." if partial else "")
                     + (f" Failed masking checks: {', '.join(failed)}." if failed else "")),
        "unreliable": partial or bool(failed),
        # the superset
        "method": method, "method_name": mc["name"], "method_config": mc,
        "protocol": first.get("protocol"), "n_examples": n, "n_reevals": cfg["n_reevals"],
        "n_select": cfg["n_select"] or cfg["n_reevals"],
        "clean": clean, "robust": robust,
        "avg_rob": robust["mean"], "wor_rob": robust["worst"], "maj_rob": robust["majority"],
        "ci95": {"clean_acc": clean["ci95"].get("mean"), "avg_rob": robust["ci95"].get("mean"),
                 "wor_rob": robust["ci95"].get("worst"), "maj_rob": robust["ci95"].get("majority")},
        "attacks": attacks, "winners": {k: sum(r["winner"] == k for r in recs) for k in ["clean", *attacks]},
        "checks": checks, "large_eps": large,
        "grad_mode": {k: a["grad_mode"] for k, a in attacks.items()},
        "eot": {k: a["eot"] for k, a in attacks.items()},
        "t_star_steps": first.get("t_star_steps"), "t_star_s": first.get("t_star_s"),
        "nfe": first.get("nfe_defense"), "nfe_defense": first.get("nfe_defense"),
        "nfe_attack": round(sum(r["nfe_attack"] for r in recs) / n, 2) if n else None,  # mean per image (cascades)
        "nfe_eval": first.get("nfe_eval"),
        "wall_s": round(wall, 3), "s_per_image": round(wall / n, 4) if n else None,
        **_provenance(recs, cfg),
        "missing": len(mg.missing[method]),
    }


def _attack_results(cfg: dict, recs: list[dict], mine: list[dict]) -> tuple[dict, dict]:
    """Per attack that applies to the method: its batch statistics and its result alone (accuracy on the samples
    it ran on, wins, settings)."""
    stats, attacks = {}, {}
    for a in cfg["attacks"]:
        k = a["name"]
        on = [r for r in recs if k in r["attacks"]]
        if not any(k in r.get("ensemble_run", [k]) for r in recs):
            continue  # not applicable to this method (e.g. an attack on an auxiliary network it does not have)
        stats[k] = _attack_stats(mine, k)
        acc = accuracies([r["attacks"][k]["preds"] for r in on], [r["label"] for r in on])
        attacks[k] = {**acc, "wins": sum(r["winner"] == k for r in recs), "kind": a["kind"], "loss": a["loss"],
                      "steps": a["steps"], "eot": a["eot"], "step_size": a["step_size"],
                      "random_start": a["random_start"], "grad_mode": a["grad"], "grad_label": GRAD_LABELS[a["grad"]],
                      "variant": a["variant"], "cascade": a["cascade"],
                      "best_curve": (stats[k] or {}).get("best_acc")}
    return stats, attacks


def _provenance(recs: list[dict], cfg: dict) -> dict:
    """Where the records were computed: dtype, backend, seeds, manifest, versions, GPU (one value, or the list of
    the values seen)."""
    first = recs[0] if recs else {}
    return {"dtype": _unique(r["dtype"] for r in recs) if recs else cfg["dtype"],
            "backend": _unique(r["backend"] for r in recs) if recs else None,
            "seeds": first.get("seeds"), "manifest_sha256": first.get("manifest_sha256"),
            "versions": _unique(r["versions"] for r in recs) if recs else None,
            "gpu": _unique(r["gpu"] for r in recs) if recs else None}


def build_report(mg: Merged, partial: bool) -> dict:
    cfg = mg.stored["config"]
    batches = read_batches(mg.out, mg.config_id)

    return {
        "status": "PARTIAL" if partial else "COMPLETE", "partial": partial,
        "config_id": mg.config_id, "manifest_sha256": manifest_sha256(mg.ids), "n_manifest": len(mg.manifest),
        "dataset": cfg["data"], "model": cfg["model"], "label_rule": label_rule(cfg["data"]),
        "threat_model": {"norm": cfg["norm"], "eps": cfg["eps"], "scale": "[0, 1]",
                         "white_box": "purifier weights, sampler and noise model known to the attacker"},
        "ensemble": {"name": cfg["ensemble"], "attacks": cfg["attacks"]},
        "default_ensemble": cfg.get("default_ensemble", {}),
        "n_reevals": cfg["n_reevals"], "seed": cfg["seed"],
        "completeness": {m: {"done": len(mg.rows[m]), "missing": mg.missing[m], "duplicates":
                             len(mg.duplicates[m])} for m in mg.methods},
        # every (method, sample) recorded more than once, with each record's place: never merged silently
        "duplicates": [{"method": m, "sample_id": i, "records": where} for (m, i), where in
                       sorted(mg.dup_where.items(), key=lambda kv: (mg.methods.index(kv[0][0]), kv[0][1]))],
        "results": [method_result(mg, m, partial, batches) for m in mg.methods],
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
    dups = report.get("duplicates") or []
    if dups:
        lines += [f"**DUPLICATES: {len(dups)} (method, image) pairs were recorded more than once — two runs wrote "
                  "into this directory. Their outcomes agree and the first record of each is used; check how this "
                  "happened before trusting the run. The pairs (records):**", ""]
        lines += [f"- {d['method']} image {d['sample_id']}: {', '.join(d['records'])}" for d in dups[:50]]
        lines += [f"- … {len(dups) - 50} more in report.json"] if len(dups) > 50 else []
        lines += [""]
    lines += [f"Labels: {report['label_rule']}", ""] if report.get("label_rule") else []
    attack_names = [a["name"] for a in report["ensemble"]["attacks"]]
    head = ["method", "n", "clean", "robust (mean)", "95 % CI", "worst", "majority", *attack_names, "t*", "NFE",
            "s/img"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        ci = r["ci95"]["avg_rob"]
        cells = [r["method"], str(r["n_examples"]), _fmt(r["clean"]["mean"]), _fmt(r["avg_rob"]),
                 "–" if not ci else f"{100 * ci[0]:.1f}–{100 * ci[1]:.1f}", _fmt(r["wor_rob"]), _fmt(r["maj_rob"]),
                 *[_fmt(r["attacks"][k]["mean"]) if k in r["attacks"] else "n/a" for k in attack_names],
                 "–" if r["t_star_steps"] is None else str(r["t_star_steps"]), str(r["nfe"]),
                 "–" if r["s_per_image"] is None else f"{r['s_per_image']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    legend = ("Accuracies in %: clean and robust are means over the N draws; worst = all N correct; majority = "
              "vote over N. Robust = per-sample worst case over the ensemble (selected on separate draws, reported "
              "on fresh ones); attack columns = each attack alone on the samples it attacked (n/a: not applicable "
              "to the method). 95 % CI: Wilson on n images.")
    lines += ["", legend,
              f"Protocol: {report['results'][0]['protocol'] if report['results'] else '–'}"]
    lines += ["", "Masking checks (docs/EVALUATION.md rule 6; value vs threshold):"]
    for r in report["results"]:
        for c in r["checks"]:
            if c["passed"] is None:  # never silently absent: why it was not run (or was superseded)
                state = ("not run: " + c["detail"].split("not run", 1)[1].lstrip(":( ").rstrip(")")
                         if "not run" in c["detail"] else f"not judged: {c['detail']}")
                lines.append(f"- {r['method']}: {c['name']} {state}")
                continue
            state = "ok" if c["passed"] else f"FAILED ({c.get('reason') or 'see report.json'})"
            value = "" if c["value"] is None else f" {c['value']:.4g} vs {c['threshold']:.4g}"
            lines.append(f"- {r['method']}: {c['name']} {state}{value}")
    lines += _escalation(report)
    for name, path in sorted(report.get("plots", {}).items()):
        lines.append(f"![{name}]({path})")
    for g in report.get("grids", []):
        lines += ["", f"Sample grid `{g['file']}` ({g['method']}; rows: clean / adversarial / purified):",
                  "label: " + " ".join(str(v) for v in g["labels"]),
                  "clean pred (first draw): " + " ".join(str(v) for v in g["clean_preds"]),
                  "adversarial pred (first report draw): " + " ".join(str(v) for v in g["adv_preds"]),
                  "pred on the purified image shown: " + " ".join(str(v) for v in g["purified_preds"])]
    return "\n".join(lines) + "\n"


def _escalation(report: dict) -> list[str]:
    """A sweep does not escalate inside a run (per-batch escalation would make results depend on the batch
    composition): a failed convergence check names the rerun that doubles the attack's steps, in a new directory."""
    attacks = {a["name"]: (i, a) for i, a in enumerate(report["ensemble"]["attacks"])}
    default = report.get("default_ensemble") or {}
    out = []
    for r in report["results"]:
        for c in r["checks"]:
            name = c["name"].removesuffix("_converged")
            if c["passed"] is False and c["name"].endswith("_converged") and name in attacks:
                i, a = attacks[name]
                how = (f"--set default_ensemble.steps={2 * a['steps']}" if default.get("use")
                       and a["steps"] == default.get("steps") else
                       f"steps = {2 * a['steps']} in its [[attacks]] entry" if default.get("use") else
                       f"--set attacks.{i}.steps={2 * a['steps']}")
                out.append(f"  - {r['method']}: {name} has not converged at {a['steps']} steps; rerun with twice the "
                           f"steps in a new out directory: `{how}`")
    return ["", "Escalation (a sweep does not rerun attacks itself):", *out] if out else []


def write_report(out, *, partial: bool = False, dest=None) -> dict:
    """Merge, check completeness and write report.json, report.md and the plots into dest (default
    DIR/report).  Raises IncompleteSweep when the sweep is incomplete (unless partial) or has conflicts."""
    mg = merge(out)
    schema = mg.stored.get("identity", {}).get("schema", 1)
    if schema != SCHEMA:  # e.g. 1: attack 'variant' "" for none, n_select / eot_chunk 0 for the default
        raise ConfigError(f"{out} was written under sweep config schema {schema}, this code reads schema {SCHEMA}: "
                          "report it with the fastpurify version that ran it, or rerun the sweep in a new out "
                          "directory")
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
