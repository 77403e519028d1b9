"""`fastpurify demo`: adversarial purification end to end on the embedded digits models, on the CPU.

Attacks the undefended classifier (PGD) and the purified classifier twice: PGD-EOT with exact gradients through
every sampler step (grad='full', recomputed per step) and with BPDA (identity backward, the weaker attack).  The
final adversarial images are re-evaluated with N fresh purifications (mean / worst-case / majority), and the
sanity checks run (undefended ≈ 0 %, large ε ≈ 0 %, BPDA ≥ full, no zero gradients).
Writes DIR/report.json and DIR/grid.png (rows: clean / adversarial / purified adversarial).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

from ..api import Purifier
from ..attacks import PGDConfig, large_eps_accuracy, pgd_eot, reevaluate, sanity_checks
from ..grad import GRAD_LABELS
from ..imageio import image_grid, write_png


def wilson_ci(p: float, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson interval for an accuracy p measured on n samples."""
    if n == 0:
        return [0.0, 1.0]
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)]


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, mininterval=0.5)


def _attack_row(method: str, purifier: Purifier, clf, mode: str, x, y, ids, cfg: PGDConfig, clean: dict, *,
                n_eval: int, seed: int, timings: dict, stats: dict | None = None):
    """PGD-EOT through classifier∘purify with gradient mode `mode`, then N fresh re-evaluations of x_adv."""
    def purified(xb, seeds):
        return clf(purifier(xb, seed=seeds, grad=mode))

    n = x.shape[0]
    t0 = time.time()
    bar = _bar(cfg.steps, f"PGD-EOT through {purifier.config.preset.name}, grad={mode}")
    x_adv = pgd_eot(purified, x, y, ids, cfg, run_seed=seed, progress=lambda k: bar.update(1), stats=stats)
    bar.close()
    timings[f"{method}_attack_s"] = round(time.time() - t0, 2)
    t0 = time.time()
    robust = reevaluate(purified, x_adv, y, ids, n_eval, run_seed=seed + 2)
    timings[f"{method}_robust_eval_s"] = round(time.time() - t0, 2)
    rc = purifier.config
    row = {
        "method": method, "clean_acc": clean["mean"], "robust_acc": robust["mean"],
        "clean_ci95": wilson_ci(clean["mean"], n), "robust_ci95": wilson_ci(robust["mean"], n),
        "clean": {k: clean[k] for k in ("mean", "worst", "majority")},
        "robust": {k: robust[k] for k in ("mean", "worst", "majority")},
        "avg_rob": robust["mean"], "wor_rob": robust["worst"], "maj_rob": robust["majority"],
        "grad_mode": mode, "grad_label": GRAD_LABELS[mode], "fixed_noise": False, "guidance_grad": None,
        "attack": {"name": "PGD-EOT", **cfg.as_dict()},
        "config": rc.as_dict(), "nfe_defense": rc.nfe, "nfe_attack": rc.nfe * cfg.steps * cfg.eot,
        "per_sample": {"clean_preds": clean["preds"], "adv_preds": robust["preds"], "labels": y.tolist()},
    }
    return row, x_adv


def run_demo(out: Path, *, n: int = 64, eps: float = 0.15, steps: int = 10, step_size: float | None = None,
             eot: int = 2, n_eval: int = 10, preset: str = "diffpure", t_star=None, seed: int = 0,
             steps_undefended: int = 50, threads: int | None = None, sanity_n: int = 16, sanity_eps: float = 0.5,
             sanity_steps: int = 5) -> dict:
    from .. import __version__
    from ..zoo import digits

    if threads:
        torch.set_num_threads(threads)
    t_start = time.time()
    models = digits()
    x, y = models.test_data()
    x, y = x[:n], y[:n]
    ids = torch.arange(n)
    clf = models.classifier
    purifier = Purifier(models, preset, t_star=t_star, grad="full")
    cfg = PGDConfig(eps=eps, steps=steps, step_size=step_size or 2.5 * eps / steps, eot=eot)
    # The undefended classifier is deterministic and cheap: it gets more iterations and no EOT.
    cfg_plain = PGDConfig(eps=eps, steps=steps_undefended, step_size=2.5 * eps / steps_undefended, eot=1)

    def undefended(xb, seeds):
        return clf(xb)

    def purified(xb, seeds):
        return clf(purifier(xb, seed=seeds))

    timings, results = {}, []
    # Undefended classifier: deterministic, so one evaluation and EOT 1.
    t0 = time.time()
    with torch.no_grad():
        clean_none = float((clf(x).argmax(1) == y).float().mean())
    x_adv_none = pgd_eot(undefended, x, y, ids, cfg_plain, run_seed=seed)
    with torch.no_grad():
        rob_none = float((clf(x_adv_none).argmax(1) == y).float().mean())
    timings["undefended_s"] = round(time.time() - t0, 2)
    results.append({"method": "none", "clean_acc": clean_none, "robust_acc": rob_none,
                    "clean_ci95": wilson_ci(clean_none, n), "robust_ci95": wilson_ci(rob_none, n),
                    "grad_mode": "autograd", "grad_label": "classifier only (deterministic)",
                    "attack": {"name": "PGD", **cfg_plain.as_dict()}})

    # Purified classifier: clean accuracy under the same N-fold protocol (shared by both attack rows), then
    # PGD-EOT with exact gradients ('full': every sampler step, recomputed per step) and with BPDA (identity).
    t0 = time.time()
    clean = reevaluate(purified, x, y, ids, n_eval, run_seed=seed + 1)
    timings["purified_clean_eval_s"] = round(time.time() - t0, 2)
    attack_stats = {}
    row_full, x_adv = _attack_row(preset, purifier, clf, "full", x, y, ids, cfg, clean, n_eval=n_eval, seed=seed,
                                  timings=timings, stats=attack_stats)
    row_full["attack_stats"] = attack_stats
    row_bpda, _ = _attack_row(f"{preset}-bpda", purifier, clf, "bpda", x, y, ids, cfg, clean, n_eval=n_eval,
                              seed=seed, timings=timings)
    results += [row_full, row_bpda]

    # Sanity checks (CONVENTIONS.md §2.6): a large ε must break the defence too (subset, full gradients).
    t0 = time.time()
    k = min(n, sanity_n)
    large = large_eps_accuracy(purified, x[:k], y[:k], ids[:k], eps=sanity_eps, steps=sanity_steps, run_seed=seed + 3)
    timings["sanity_large_eps_s"] = round(time.time() - t0, 2)
    checks = sanity_checks(undefended_acc=rob_none, large_eps_acc=large["mean"], full_acc=row_full["robust_acc"],
                           bpda_acc=row_bpda["robust_acc"], zero_grad_frac=attack_stats["zero_grad_frac"], n=n)
    timings["total_s"] = round(time.time() - t_start, 2)

    out.mkdir(parents=True, exist_ok=True)
    k = min(n, 16)
    with torch.no_grad():
        shown = purifier(x_adv[:k], seed=torch.arange(k))
    write_png(out / "grid.png", image_grid([x[:k], x_adv[:k], shown], scale=4))
    report = {
        "protocol": "evaluate-after-optimizing: final x_adv re-evaluated with N fresh purifications",
        "dataset": "sklearn digits 16x16, held-out test split (fastpurify.zoo.digits)", "n_examples": n,
        "n_reevals": n_eval, "threat_model": {"norm": "linf", "eps": eps},
        "white_box": "purifier weights, sampler and noise model known to the attacker; fresh noise per call",
        "seeds": {"run": seed, "clean_eval": seed + 1, "robust_eval": seed + 2, "sanity": seed + 3},
        "results": results, "sanity": {"large_eps": large, "checks": checks}, "timings": timings,
        "versions": {"fastpurify": __version__, "torch": torch.__version__, "python": platform.python_version()},
        "device": "cpu", "torch_threads": torch.get_num_threads(), "dtype": "float32",
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_table(report: dict) -> str:
    n, N = report["n_examples"], report["n_reevals"]
    lines = [f"fastpurify demo — digits 16x16, n = {n} held-out images, linf eps = {report['threat_model']['eps']:.4g}",
             f"{'method':16s} {'clean':>8s} {'robust':>8s} {'worst':>8s} {'majority':>9s}  attack"]
    for r in report["results"]:
        a = r["attack"]
        attack = f"{a['name']} {a['steps']} steps x EOT {a['eot']}, step {a['step_size']:.4g}"
        if "robust" in r:
            attack += f", grad={r['grad_mode']}, N={N} re-evals"
            worst, maj = f"{r['robust']['worst']:.1%}", f"{r['robust']['majority']:.1%}"
        else:
            worst = maj = "-"
        lines.append(f"{r['method']:16s} {r['clean_acc']:8.1%} {r['robust_acc']:8.1%} {worst:>8s} {maj:>9s}  {attack}")
    lines.append("clean/robust: mean over N purifications; worst: all N correct; majority: vote over N")
    sanity = report.get("sanity", {})
    if sanity:
        large = sanity["large_eps"]
        lines.append(f"sanity: large eps {large['eps']:g} on {large['n_examples']} images -> {large['mean']:.1%}")
        for c in sanity["checks"]:
            status = "skipped" if c["passed"] is None else ("ok" if c["passed"] else "FAILED")
            value = "" if c["value"] is None else f" ({c['value']:.3g})"
            lines.append(f"  {c['name']:22s} {status}{value}")
    lines.append(f"total {report['timings']['total_s']:.0f} s on {report['torch_threads']} CPU threads")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastpurify demo", description=__doc__)
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.add_argument("--n", type=int, default=64, help="held-out images")
    p.add_argument("--eps", type=float, default=0.15, help="linf radius on the [0, 1] scale")
    p.add_argument("--steps", type=int, default=10, help="PGD iterations against the purified classifier")
    p.add_argument("--steps-undefended", type=int, default=50, help="PGD iterations against the bare classifier")
    p.add_argument("--step-size", type=float, default=None, help="default 2.5·eps/steps")
    p.add_argument("--eot", type=int, default=2, help="EOT draws per gradient")
    p.add_argument("--n-eval", type=int, default=10, help="fresh purifications per re-evaluation")
    p.add_argument("--preset", default="diffpure")
    p.add_argument("--t-star", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--sanity-n", type=int, default=16, help="images for the large-eps sanity attack")
    a = p.parse_args(argv)
    report = run_demo(a.out, n=a.n, eps=a.eps, steps=a.steps, step_size=a.step_size, eot=a.eot, n_eval=a.n_eval,
                      preset=a.preset, t_star=a.t_star, seed=a.seed, steps_undefended=a.steps_undefended,
                      threads=a.threads, sanity_n=a.sanity_n)
    print(format_table(report))
    print(f"wrote {a.out / 'report.json'} and {a.out / 'grid.png'}")
    return 0
