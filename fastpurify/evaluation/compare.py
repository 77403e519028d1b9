"""`fastpurify compare`: none / DiffPure / GDMP / AGDM / multi-round on the embedded digits benchmark, same attack.

Every method is attacked with the same PGD-EOT (gradients through the whole purifier, guidance included), then
the final adversarial images are re-evaluated with N fresh purifications (mean / worst / majority).
`--tune` first sweeps the guidance scales on the *validation* split and reports on the held-out split with the
chosen values; without it the defaults in fastpurify.methods.DIGITS are used (they came from such a sweep).
Writes DIR/report.json, DIR/compare.png (robust vs clean accuracy) and DIR/t_star.png (robust vs t*).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from ..attacks import PGDConfig, pgd_eot, reevaluate
from ..methods import DIGITS, build_method, with_scale
from .demo import wilson_ci

METHODS = ("none", "diffpure", "gdmp-mse", "agdm", "multiround")


def evaluate_method(name, purifier, clf, x, y, cfg: PGDConfig, n_eval: int, seed: int) -> dict:
    """Clean and robust accuracy (mean / worst / majority over n_eval purifications) and seconds per image."""
    ids = torch.arange(len(x))
    if purifier is None:
        def fwd(xb, seeds):
            return clf(xb)
    else:
        def fwd(xb, seeds):
            return clf(purifier(xb, seed=seeds))
    t0 = time.time()
    clean = reevaluate(fwd, x, y, ids, 1 if purifier is None else n_eval, run_seed=seed + 1)
    t_clean = time.time() - t0
    x_adv = pgd_eot(fwd, x, y, ids, cfg if purifier is not None else PGDConfig(cfg.eps, 50, 2.5 * cfg.eps / 50),
                    run_seed=seed)
    robust = reevaluate(fwd, x_adv, y, ids, 1 if purifier is None else n_eval, run_seed=seed + 2)
    out = {"method": name, "clean_acc": clean["mean"], "robust_acc": robust["mean"],
           "clean": {k: clean[k] for k in ("mean", "worst", "majority")},
           "robust": {k: robust[k] for k in ("mean", "worst", "majority")},
           "clean_ci95": wilson_ci(clean["mean"], len(x)), "robust_ci95": wilson_ci(robust["mean"], len(x)),
           "seconds_per_image_purify": round(t_clean / max(1, clean["n"]) / len(x), 4),
           "grad_mode": "exact (no purifier)"}
    if purifier is not None:
        out.update(purifier.describe())
        out["method"] = name
    return out


def tune(models, aux, n: int, cfg: PGDConfig, n_eval: int, seed: int, progress) -> dict:
    """Pick AGDM's s and GDMP's a on the validation split: best robust mean accuracy with clean ≥ 90 %."""
    xv, yv = models.val_data()
    xv, yv = xv[:n], yv[:n]
    grid = {"agdm": [0.0, 3e3, 1e4, 3e4], "gdmp-mse": [1e4, 1e5, 3e5]}
    table, chosen = {}, {}
    for name, scales in grid.items():
        rows = []
        for s in scales:
            pur = build_method(name, models.diffusion, aux, settings=with_scale(name, s))
            r = evaluate_method(name, pur, models.classifier, xv, yv, cfg, n_eval, seed)
            rows.append({"scale": s, "clean": r["clean_acc"], "robust": r["robust_acc"]})
            progress(f"tune {name} scale={s:g}: clean {r['clean_acc']:.3f} robust {r['robust_acc']:.3f}")
        ok = [r for r in rows if r["clean"] >= 0.9] or rows
        chosen[name] = max(ok, key=lambda r: (r["robust"], -r["scale"]))["scale"]
        table[name] = rows
    return {"split": "val", "n": n, "grid": table, "chosen": chosen, "rule": "max robust mean s.t. clean >= 0.9"}


def _plot(path_cmp: Path, path_t: Path, results: list[dict], sweep: dict) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in results:
        ax.scatter(r["clean_acc"], r["robust_acc"])
        ax.annotate(r["method"], (r["clean_acc"], r["robust_acc"]), fontsize=8)
    ax.set_xlabel("clean accuracy"), ax.set_ylabel("robust accuracy (mean over N)")
    ax.set_title("digits 16x16, PGD-EOT through the purifier")
    fig.tight_layout(), fig.savefig(path_cmp, dpi=120), plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, rows in sweep.items():
        ax.plot([r["t_star"] for r in rows], [r["robust_acc"] for r in rows], marker="o", label=name)
    ax.set_xlabel("t* (steps of 1000)"), ax.set_ylabel("robust accuracy (mean over N)"), ax.legend()
    fig.tight_layout(), fig.savefig(path_t, dpi=120), plt.close(fig)
    return True


def run_compare(out: Path, *, n: int = 32, eps: float = 0.15, steps: int = 5, eot: int = 1, n_eval: int = 5,
                methods=METHODS, t_sweep=(30, 70, 100), do_tune: bool = False, seed: int = 0) -> dict:
    from .. import __version__
    from ..zoo import digits, digits_aux

    t_start = time.time()
    models, aux = digits(), digits_aux()
    cfg = PGDConfig(eps=eps, steps=steps, step_size=2.5 * eps / steps, eot=eot)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    tuning = tune(models, aux, n, cfg, n_eval, seed, log) if do_tune else None
    settings = {name: DIGITS.get(name) for name in methods}
    if tuning:
        for name, s in tuning["chosen"].items():
            settings[name] = with_scale(name, s)
    x, y = models.test_data()
    x, y = x[:n], y[:n]
    results = []
    for name in methods:
        pur = None if name == "none" else build_method(name, models.diffusion, aux, settings=settings[name])
        results.append(evaluate_method(name, pur, models.classifier, x, y, cfg, n_eval, seed))
        r = results[-1]
        log(f"{name:12s} clean {r['clean_acc']:.3f} robust {r['robust_acc']:.3f} (worst {r['robust']['worst']:.3f},"
            f" majority {r['robust']['majority']:.3f})")
    sweep = {}
    for name in ("diffpure", "agdm"):
        rows = []
        for k in t_sweep:
            pur = build_method(name, models.diffusion, aux, t_star=k, settings=settings.get(name))
            r = evaluate_method(name, pur, models.classifier, x, y, cfg, n_eval, seed)
            rows.append({"t_star": k, "clean_acc": r["clean_acc"], "robust_acc": r["robust_acc"]})
            log(f"t* sweep {name} t*={k}: clean {r['clean_acc']:.3f} robust {r['robust_acc']:.3f}")
        sweep[name] = rows
    out.mkdir(parents=True, exist_ok=True)
    plotted = _plot(out / "compare.png", out / "t_star.png", results, sweep)
    report = {"protocol": "evaluate-after-optimizing: final x_adv re-evaluated with N fresh purifications",
              "dataset": "sklearn digits 16x16, held-out test split", "n_examples": n, "n_reevals": n_eval,
              "threat_model": {"norm": "linf", "eps": eps}, "attack": {"name": "PGD-EOT", **cfg.as_dict()},
              "attack_note": "the undefended classifier gets PGD-50 (deterministic, cheap)",
              "seeds": {"run": seed}, "tuning": tuning, "results": results, "t_star_sweep": sweep,
              "plots": plotted, "total_s": round(time.time() - t_start, 1),
              "versions": {"fastpurify": __version__, "torch": torch.__version__},
              "torch_threads": torch.get_num_threads()}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_table(report: dict) -> str:
    lines = [f"fastpurify compare — digits, n = {report['n_examples']}, linf eps = {report['threat_model']['eps']}, "
             f"PGD {report['attack']['steps']} x EOT {report['attack']['eot']}, N = {report['n_reevals']}",
             f"{'method':12s} {'clean':>7s} {'robust':>7s} {'worst':>7s} {'majority':>8s} {'NFE':>5s} {'s/img':>7s}"]
    for r in report["results"]:
        rb = r["robust"]
        lines.append(f"{r['method']:12s} {r['clean_acc']:7.1%} {rb['mean']:7.1%} {rb['worst']:7.1%} "
                     f"{rb['majority']:8.1%} {r.get('nfe', 0):5d} {r['seconds_per_image_purify']:7.4f}")
    lines.append(f"total {report['total_s']:.0f} s")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastpurify compare", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("compare-out"))
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--eps", type=float, default=0.15)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--eot", type=int, default=1)
    p.add_argument("--n-eval", type=int, default=5)
    p.add_argument("--tune", action="store_true", help="sweep guidance scales on the validation split first")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    report = run_compare(a.out, n=a.n, eps=a.eps, steps=a.steps, eot=a.eot, n_eval=a.n_eval, do_tune=a.tune,
                         seed=a.seed)
    print(format_table(report))
    return 0
