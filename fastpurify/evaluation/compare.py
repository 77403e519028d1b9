"""`fastpurify compare`: the purification methods and the honest baselines on the embedded digits benchmark, each
through the evaluation protocol with its default attack ensemble (adaptive attacks for guided methods included).

Defences: none (the classifier alone), aux (AGDM's TRADES-trained auxiliary network φ alone), diffpure,
diffpure+aux (DiffPure in front of φ), gdmp-mse, agdm, multiround.  `--tune` first sweeps the guidance settings
(AGDM: scale, λ_cls/λ_feat, view, window, t*; GDMP: scale; DiffPure: t*) on the *validation* split under a reduced
ensemble and reports on the held-out split with the chosen values; a setting that fails a check is not eligible
(the clean–robust frontier plot marks it).  An exact attack whose (paired) convergence check fails, on either
split, is rerun with twice the steps (`--escalate`, default once).  Results are cached per defence in DIR/cache/
so an interrupted run resumes.
Writes DIR/report.json, DIR/report.md, DIR/compare.png, and with --tune DIR/frontier.png and DIR/t_star.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from ..attacks.adaptive import default_attacks
from ..imageio import pyplot
from ..methods import DIGITS
from .defences import build_defence
from .protocol import ProtocolConfig, evaluate
from .stats import half_width
from .tables import attack_coverage_lines, checks_lines, failed_checks, markdown_table

METHODS = ("none", "aux", "diffpure", "agdm", "diffpure+aux", "gdmp-mse", "multiround")

# The compare's sampler budgets: (settings, t*) per defence.  The attacks keep the protocol's full budget (20 steps
# × EOT 4, second order through guidance); the purifiers run at 10–30 network calls so that 64 held-out images ×
# 7 defences × N = 5 fit in about an hour on 2 cores.  Guided samplers need the full DDPM chain, so AGDM and GDMP
# get a smaller t* instead of respacing.  `--paper-settings` uses the methods' own presets (DiffPure 100 steps,
# AGDM t* 70, GDMP 2 × 36, multi-round 110 calls: 3–7× the cost).
BUDGET = {
    "diffpure": ({**DIGITS["diffpure"], "steps": 10}, None),
    "diffpure+aux": ({**DIGITS["diffpure"], "steps": 10}, None),
    "agdm": (DIGITS["agdm"], 20),
    "gdmp-mse": (DIGITS["gdmp-mse"], 15),
    "multiround": ({**DIGITS["multiround"], "steps": 10}, None),
}


def default_settings(name: str, paper: bool = False) -> tuple[dict | None, int | None]:
    """(settings, t*) a defence runs with in the compare."""
    if name in ("none", "aux"):
        return None, None
    if paper:
        return DIGITS[name.removesuffix("+aux")], None
    return BUDGET[name]


def cache_key(defence, attacks, *, split: str, ids, cfg: ProtocolConfig, settings, t_star, x, y, networks) -> str:
    """Everything a defence's result depends on: the code (version and a hash of the package's source, so a
    docs-only change keeps the cache), the defence as built (its flags and purifier configuration), the weights of
    `networks` (the diffusion model, classifier and φ), the attack list with the PGD settings it resolves to
    (default step sizes included), the data's contents, and the protocol settings."""
    from .. import _version
    from ..attacks.adaptive import pgd_config_for
    from .fingerprint import tensors_fingerprint, weights_fingerprint

    resolved = [pgd_config_for(a, defence, cfg.eps, cfg.norm, cfg.eot_chunk).as_dict() for a in attacks]
    parts = (_version.__version__, _version.code_fingerprint(), defence.describe(), weights_fingerprint(*networks),
             [a.as_dict() for a in attacks], resolved, split, ids.tolist(), tensors_fingerprint(x, y, ids), cfg,
             repr(settings), t_star)
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def evaluate_cached(name, models, aux, x, y, ids, *, settings, t_star, steps, eot, cfg: ProtocolConfig, cache: Path,
                    split: str, log) -> dict:
    """evaluate() of one defence, read from / written to cache (keyed by everything the result depends on)."""
    defence = build_defence(name, models.diffusion, models.classifier, aux, settings=settings, t_star=t_star)
    attacks = default_attacks(defence, steps=steps, eot=eot)
    key = cache_key(defence, attacks, split=split, ids=ids, cfg=cfg, settings=settings, t_star=t_star, x=x, y=y,
                    networks=(models.diffusion, models.classifier, aux))
    path = cache / f"{name.replace('+', '_')}-{split}-{key}.json"
    if path.exists():
        log(f"{name} ({split}): cached {path.name}")
        return json.loads(path.read_text())
    r = evaluate(defence, x, y, ids, attacks, cfg, log=log)
    r.pop("x_adv")
    r["split"], r["settings"], r["t_star"] = split, repr(settings), t_star
    cache.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r) + "\n")
    log(f"{name} ({split}): clean {r['clean']['mean']:.3f} robust {r['ensemble']['mean']:.3f} ({r['seconds']:.0f} s)")
    return r


def agdm_grid(settings: dict, t_star: int | None) -> list[tuple[str, dict, int | None]]:
    """One-at-a-time sweeps around the base AGDM setting: (label, settings, t*)."""
    base = settings["agdm"]
    grid = []
    for s in (0.0, 300.0, 1000.0, 3000.0, 10000.0):
        grid.append((f"s={s:g}", {**settings, "agdm": replace(base, scale=s)}, t_star))
    for lc, lf in ((0.0, 1.0), (1.0, 0.0)):
        grid.append((f"lambda_cls={lc:g},lambda_feat={lf:g}",
                     {**settings, "agdm": replace(base, lambda_cls=lc, lambda_feat=lf)}, t_star))
    grid.append(("view=tweedie", {**settings, "agdm": replace(base, view="tweedie")}, t_star))
    grid.append((f"window=[0,{(t_star or 70) // 2 - 1}]",
                 {**settings, "agdm": replace(base, window=(0, (t_star or 70) // 2 - 1))}, t_star))
    for k in (10, 40, 70):
        if k != t_star:
            grid.append((f"t*={k}", {**settings, "agdm": base}, k))
    return grid


def choose(rows: list[dict]) -> int | None:
    """The chosen tuning setting: the largest ensemble robust accuracy among the *eligible* ones — clean accuracy
    ≥ 90 % and no failed check (a setting whose figure a check calls into question cannot win) — ties to the
    first (the smaller scale).  None when no setting is eligible."""
    ok = [i for i, r in enumerate(rows) if r["eligible"]]
    return max(ok, key=lambda i: (rows[i]["robust"], -i)) if ok else None


def _tuning_row(label: str, t_star, r: dict) -> dict:
    failed = [c["name"] for c in r["checks"] if c["passed"] is False]
    why = [f"clean {100 * r['clean']['mean']:.1f} % < 90 %"] if r["clean"]["mean"] < 0.9 else []
    why += [f"failed check {name}" for name in failed]
    return {"label": label, "t_star": t_star, "clean": r["clean"]["mean"], "robust": r["ensemble"]["mean"],
            "worst": r["ensemble"]["worst"], "failed_checks": failed, "eligible": not why, "not_eligible": why}


def tune(models, aux, *, n: int, steps: int, eot: int, cfg: ProtocolConfig, cache: Path, log,
         paper: bool = False) -> dict:
    """Sweep guidance settings on the validation split under a reduced ensemble; choose per method (`choose`) the
    largest ensemble robust accuracy among settings with clean accuracy ≥ 90 % and no failed check.  A method
    with no eligible setting is not tuned: it runs its default setting, and the report says so."""
    xv, yv = models.val_data()
    xv, yv, ids = xv[:n], yv[:n], torch.arange(n)
    (agdm, agdm_t), (gdmp, gdmp_t) = default_settings("agdm", paper), default_settings("gdmp-mse", paper)
    diffpure, _ = default_settings("diffpure", paper)
    grids = {"agdm": agdm_grid(agdm, agdm_t),
             "gdmp-mse": [(f"a={a:g}", {**gdmp, "gdmp": replace(gdmp["gdmp"], guide_scale=a)}, gdmp_t)
                          for a in (1e3, 1e4, 1e5)],
             "diffpure": [(f"t*={k}", diffpure, k) for k in (30, 70, 100)]}
    table, chosen, not_tuned = {}, {}, {}
    for method, grid in grids.items():
        rows = []
        for label, settings, t_star in grid:
            r = evaluate_cached(method, models, aux, xv, yv, ids, settings=settings, t_star=t_star, steps=steps,
                                eot=eot, cfg=cfg, cache=cache, split="val", log=log)
            rows.append(_tuning_row(label, t_star, r))
        best = choose(rows)
        if best is None:
            not_tuned[method] = "no eligible setting (each has clean < 90 % or a failed check): default setting"
            log(f"{method}: {not_tuned[method]}")
        else:
            chosen[method] = {"label": rows[best]["label"], "settings": grid[best][1], "t_star": grid[best][2]}
        table[method] = rows
    return {"split": "val", "n": n, "attack_budget": {"steps": steps, "eot": eot}, "grid": table,
            "chosen": {m: {"label": c["label"], "t_star": c["t_star"]} for m, c in chosen.items()},
            "not_tuned": not_tuned,
            "rule": "max ensemble robust mean s.t. clean >= 0.9 and no failed check", "_chosen": chosen}


def verdict(results: dict[str, dict]) -> list[str]:
    """AGDM against φ alone, DiffPure in front of φ, and DiffPure: 'beats' only if its ensemble robust accuracy is
    higher by more than the interval at no more than 2 points less clean accuracy."""
    if "agdm" not in results:
        return []
    a = results["agdm"]
    ra, ca, n = a["ensemble"]["mean"], a["clean"]["mean"], a["n_examples"]
    lines = []
    for other in ("aux", "diffpure+aux", "diffpure"):
        if other not in results:
            continue
        o = results[other]
        ro, co = o["ensemble"]["mean"], o["clean"]["mean"]
        beats = ra - ro > half_width(ro, n) and ca >= co - 0.02
        lines.append(f"AGDM {'beats' if beats else 'does NOT beat'} {other}: robust {100 * ra:.1f} % vs "
                     f"{100 * ro:.1f} %, clean {100 * ca:.1f} % vs {100 * co:.1f} %")
    lines += [f"AGDM checks: {note}" for note in a.get("notes", [])]
    diag = a.get("diagnostics", {})
    if "aux_agreement" in diag:
        k, tot = diag["aux_agreement_count"]
        lines.append(f"AGDM's purified prediction equals argmax φ(x_adv) in {k} of {tot} reported draws "
                     f"({100 * diag['aux_agreement']:.1f} %)")
    return lines


def frontier_label(method: str, row: dict, chosen: dict) -> str:
    """A tuning setting's label in the frontier plot: chosen, or marked when a check failed (not eligible)."""
    mark = "  ← chosen" if chosen.get(method) == row["label"] else ""
    if row.get("failed_checks"):
        mark += "  ✗ FAILED " + ", ".join(row["failed_checks"])
    return f"{method} {row['label']}{mark} (clean {100 * row['clean']:.0f} %)"


def _plot_frontier(plt, path: Path, tuning: dict) -> None:
    """Left: clean vs robust accuracy of every tuning setting (95 % Wilson intervals on the validation images);
    right: the same robust accuracies as bars, chosen settings marked, clean accuracy in the label (on a small
    validation split many settings share one clean accuracy and the scatter collapses to a column).  A setting
    that failed a check (not eligible) is drawn as a cross and its label names the failed checks."""
    from .stats import wilson_ci

    n, chosen = tuning["n"], {m: c["label"] for m, c in tuning["chosen"].items()}
    rows = [(m, r) for m, grid in tuning["grid"].items() for r in grid]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.28 * len(rows) + 2.2),
                                      gridspec_kw={"width_ratios": [1, 1.3]})
    colours = {m: f"C{i}" for i, m in enumerate(tuning["grid"])}
    for m, r in rows:
        lo, hi = wilson_ci(r["robust"], n)
        left.errorbar(r["clean"], r["robust"], yerr=[[r["robust"] - lo], [hi - r["robust"]]],
                      fmt="x" if r.get("failed_checks") else "o", capsize=2, color=colours[m],
                      alpha=1.0 if chosen.get(m) == r["label"] else 0.35)
    left.set_xlabel("clean accuracy"), left.set_ylabel("robust accuracy (reduced ensemble, 95 % CI)")
    left.set_title(f"clean–robust frontier, validation split (n = {n})", fontsize=9)
    ys = range(len(rows))[::-1]
    ci = [wilson_ci(r["robust"], n) for _, r in rows]
    right.barh(list(ys), [r["robust"] for _, r in rows], color=[colours[m] for m, _ in rows], capsize=2,
               xerr=[[r["robust"] - lo for (_, r), (lo, _) in zip(rows, ci)],
                     [hi - r["robust"] for (_, r), (_, hi) in zip(rows, ci)]])
    right.set_yticks(list(ys), [frontier_label(m, r, chosen) for m, r in rows], fontsize=7)
    right.set_xlabel("robust accuracy (reduced ensemble)"), right.set_xlim(0, 1)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def _plot(out: Path, results: dict, tuning: dict | None) -> bool:
    plt = pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name, r in results.items():
        ci = r["ensemble"]["mean_ci95"]
        m = r["ensemble"]["mean"]
        ax.errorbar(r["clean"]["mean"], m, yerr=[[m - ci[0]], [ci[1] - m]], fmt="o", capsize=3)
        ax.annotate(name, (r["clean"]["mean"], m), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("clean accuracy (mean over N)"), ax.set_ylabel("robust accuracy, attack ensemble (mean over N)")
    ax.set_title("digits 16x16, held-out: per-sample worst case over the ensemble", fontsize=9)
    fig.tight_layout(), fig.savefig(out / "compare.png", dpi=120), plt.close(fig)
    if tuning:
        _plot_frontier(plt, out / "frontier.png", tuning)
        fig, ax = plt.subplots(figsize=(5, 4))
        base = {"diffpure": None, "agdm": f"s={DIGITS['agdm']['agdm'].scale:g}"}  # the t* sweep's centre point
        for method in ("diffpure", "agdm"):
            pts = sorted((r["t_star"] or 100, r["robust"]) for r in tuning["grid"][method]
                         if r["label"].startswith("t*") or r["label"] == base[method])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_xlabel("t* (steps of 1000)"), ax.set_ylabel("robust accuracy (validation, reduced ensemble)")
        ax.legend(), fig.tight_layout(), fig.savefig(out / "t_star.png", dpi=120), plt.close(fig)
    return True


@dataclass(frozen=True)
class CompareSettings:
    """What `compare` runs (`run_compare(out, CompareSettings(...))`, or keywords: `run_compare(out, n=8)`)."""

    n: int = 64                       # held-out digits
    eps: float = 0.15                 # ℓ∞ radius on the [0, 1] scale
    steps: int = 20                   # exact attacks' iterations
    eot: int = 4                      # EOT draws per gradient
    n_eval: int = 5                   # N report draws
    methods: tuple = METHODS
    do_tune: bool = False             # tune on the validation split first
    tune_n: int = 24                  # ... on this many validation images
    tune_steps: int = 10              # ... with this attack budget
    tune_eot: int = 1
    seed: int = 0
    paper_settings: bool = False      # the methods' own sampler presets instead of the compare's budget
    escalate: int = 1                 # reruns of a non-converged exact attack with 2× the steps


def run_compare(out: Path, settings: CompareSettings | None = None, *, log=None, **overrides) -> dict:
    """Run the comparison into `out`; keyword overrides replace fields of `settings` (unknown: TypeError)."""
    from .._version import __version__
    from ..zoo import digits, digits_aux

    c = replace(settings or CompareSettings(), **overrides)
    n, eps, steps, eot, n_eval, methods, seed = c.n, c.eps, c.steps, c.eot, c.n_eval, tuple(c.methods), c.seed
    paper_settings = c.paper_settings
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    from .sweep.config import settings_problems  # the validation `sweep check` and `sweep` run, before any work

    problems = [p for m in methods for p in settings_problems(m, **dict(zip(("settings", "t_star"),
                                                                              default_settings(m, paper_settings))))]
    if problems:
        raise ValueError("; ".join(problems))
    t_start = time.time()
    models, aux = digits(), digits_aux()
    cache = out / "cache"
    cfg = ProtocolConfig(eps=eps, n_reevals=n_eval, seed=seed, escalate=c.escalate)
    tuning = None
    if c.do_tune:
        tuning = tune(models, aux, n=c.tune_n, steps=c.tune_steps, eot=c.tune_eot,
                      cfg=replace(cfg, n_reevals=3, large_eps_n=8), cache=cache, log=log,
                      paper=paper_settings)
    chosen = tuning.pop("_chosen") if tuning else {}
    x, y = models.test_data()
    x, y, ids = x[:n], y[:n], torch.arange(n)
    results = {}
    for name in methods:
        settings, t_star = default_settings(name, paper_settings)
        if name in chosen:
            settings, t_star = chosen[name]["settings"], chosen[name]["t_star"]
        elif name == "diffpure+aux" and "diffpure" in chosen:  # φ behind the same purifier as DiffPure's
            settings, t_star = chosen["diffpure"]["settings"], chosen["diffpure"]["t_star"]
        results[name] = evaluate_cached(name, models, aux, x, y, ids, settings=settings, t_star=t_star,
                                        steps=steps, eot=eot, cfg=cfg, cache=cache, split="test", log=log)
    out.mkdir(parents=True, exist_ok=True)
    report = {"dataset": "sklearn digits 16x16, held-out test split", "n_examples": n, "n_reevals": n_eval,
              "settings": {**asdict(c), "methods": list(methods)},
              "threat_model": {"norm": "linf", "eps": eps}, "attack_budget": {"steps": steps, "eot": eot},
              "tuning": tuning, "results": list(results.values()), "verdict": verdict(results),
              "failed_checks": failed_checks(list(results.values())), "seed": seed,
              "seconds": round(time.time() - t_start, 1),  # this run (cached defences cost ~0)
              "compute_seconds": round(sum(r["seconds"] for r in results.values()), 1),  # every defence's own time
              "versions": {"fastpurify": __version__, "torch": torch.__version__},
              "torch_threads": torch.get_num_threads()}
    report["plots"] = _plot(out, results, tuning)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(format_table(report) + "\n")
    return report


def format_table(report: dict) -> str:
    lines = [f"fastpurify compare — digits, n = {report['n_examples']} held-out, linf eps = "
             f"{report['threat_model']['eps']}, exact attacks {report['attack_budget']['steps']} steps × EOT "
             f"{report['attack_budget']['eot']}, N = {report['n_reevals']}", "",
             markdown_table(report["results"]), "", *report["verdict"], "", "masking checks:",
             *checks_lines(report["results"]),
             "", "samples each attack ran on:", *attack_coverage_lines(report["results"])]
    if report["failed_checks"]:
        lines.append(f"FAILED CHECKS: {', '.join(report['failed_checks'])}")
    for r in report["results"]:
        lines += [f"{r['defence']['defence']}: {note}" for note in r.get("notes", [])]
    if report["tuning"]:
        lines.append(f"tuning (val, n = {report['tuning']['n']}): " + ", ".join(
            f"{m}: {c['label']}" for m, c in report["tuning"]["chosen"].items()))
        lines += [f"tuning: {m} not tuned: {why}" for m, why in report["tuning"].get("not_tuned", {}).items()]
    lines.append(f"compute {report['compute_seconds']:.0f} s over the defences (each measured when it ran; "
                 f"this run {report['seconds']:.0f} s)")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastpurify compare", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("compare-out"))
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--eps", type=float, default=0.15)
    p.add_argument("--steps", type=int, default=20, help="PGD iterations of the exact-gradient attacks")
    p.add_argument("--eot", type=int, default=4)
    p.add_argument("--n-eval", type=int, default=5)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--tune", action="store_true", help="sweep guidance settings on the validation split first")
    p.add_argument("--tune-n", type=int, default=24, help="validation images for tuning")
    p.add_argument("--tune-steps", type=int, default=10, help="exact-attack steps while tuning")
    p.add_argument("--tune-eot", type=int, default=1, help="EOT draws while tuning")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--escalate", type=int, default=1,
                   help="rerun an exact attack that has not converged with 2x the steps, at most this often")
    p.add_argument("--paper-settings", action="store_true",
                   help="the methods' own sampler presets instead of the compare's budget (3–7x slower)")
    a = p.parse_args(argv)
    given = {**vars(a), "methods": tuple(a.methods.split(",")), "do_tune": a.tune}
    settings = CompareSettings(**{f.name: given[f.name] for f in fields(CompareSettings)})
    report = run_compare(a.out, settings)
    print(format_table(report))
    return 0
