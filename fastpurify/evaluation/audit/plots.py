"""Audit figures (matplotlib, optional at run time; without it report.json says they were not drawn): robust
accuracy against attack steps with Wilson intervals (each exact attack at half and full steps, escalated reruns
included, from the per-sample records on the report draws), robust accuracy against ε (eps_curve.py), the
loss curves of every attack (stats.loss), the gradient-consistency curve (measured cosine of two disjoint m-draw means, with the model's prediction) and the
labelled sample grid (without matplotlib the CLI writes it unlabelled)."""

from __future__ import annotations

import torch

from ...attacks.pgd import attack_seeds
from ...imageio import pyplot
from ...ops import streams
from ..stats import wilson_ci

GRID_DRAW = 0  # the report draw whose purification and predictions the sample grid shows


def grid_samples(report: dict, k: int = 16) -> dict:
    """The first k images: clean, the chosen adversarial candidate and its purification on report draw GRID_DRAW
    (seeded as that draw, so the image shown is the one classified: exact for per-row seeding; --batched seeds
    the same draw over a different batch), with labels and both predictions on that draw.  'purified' is None for
    one module doing both (its output is logits, not an image)."""
    x, x_adv, purifier = report["_x"], report["_x_adv"], report["_purifier"]
    records = report["protocol"]["records"]
    k = min(k, len(x))
    seeds = attack_seeds(report["seeds"]["run_seed"], torch.tensor([r["id"] for r in records[:k]]), streams.EVAL,
                         GRID_DRAW)
    with torch.no_grad():
        shown = purifier(x_adv[:k], seed=seeds)
    return {"clean": x[:k], "adversarial": x_adv[:k], "purified": shown if shown.shape == x[:k].shape else None,
            "label": [r["label"] for r in records[:k]],
            "clean_pred": [r["clean_preds"][GRID_DRAW] for r in records[:k]],
            "adv_pred": [r["adv_preds"][GRID_DRAW] for r in records[:k]]}


def accuracy_vs_steps(report: dict) -> dict:
    """{attack: [(steps, mean, [lo, hi]), …]} for every exact attack with half-steps outcomes."""
    records, out = report["protocol"]["records"], {}
    for a in report["protocol"]["attacks"]:
        spec = a["spec"]
        if "skipped" in a or not spec["exact"]:
            continue
        pts = []
        for key, steps in (("half_preds", spec["steps"] // 2), ("preds", spec["steps"])):
            acc = [sum(p == r["label"] for p in r["attacks"][a["attack"]][key]) / len(r["attacks"][a["attack"]][key])
                   for r in records if key in r["attacks"].get(a["attack"], {})]
            if acc:
                m = sum(acc) / len(acc)
                pts.append((steps, round(m, 4), wilson_ci(m, len(acc))))
        out[a["attack"]] = pts
    return out


def writers(report: dict) -> tuple[dict, dict]:
    """({file name: writer(path)}, what report.json should say about the figures)."""
    plt = pyplot()
    if plt is None:
        return {}, {"skipped": "matplotlib is not installed (pip install matplotlib); the numbers are in report.json",
                    "grid": "unlabelled (no matplotlib): rows clean / adversarial / purified adversarial, the first "
                            f"16 images, purified as report draw {GRID_DRAW}"}
    curves = accuracy_vs_steps(report)
    gc = report["gradient_consistency"]

    def steps_fig(path):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for name, pts in curves.items():
            xs = [p[0] for p in pts]
            ys = [100 * p[1] for p in pts]
            err = [[100 * (p[1] - p[2][0]) for p in pts], [100 * (p[2][1] - p[1]) for p in pts]]
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        ax.set(xlabel="attack steps", ylabel="robust acc. % (95 % Wilson)",
               title=report["defence"])
        ax.legend(fontsize=7)
        fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)

    def consistency_fig(path):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        m = [int(k) for k in gc["curve_measured"]]
        ax.plot(m, list(gc["curve_measured"].values()), "o-", label="measured: two disjoint m-draw means")
        mm = [int(k) for k in gc["curve_model"]]
        ax.plot(mm, list(gc["curve_model"].values()), "--", label="model from the lower-95 % pairwise cosine")
        ax.axhline(gc["target_cos"] ** 2, color="grey", lw=0.8, label="target (cosine² of two means)")
        ax.set(xscale="log", xlabel="EOT draws m", ylabel="cosine", ylim=(-0.05, 1.05), title=report["defence"])
        ax.legend(fontsize=7)
        fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)

    files = {"accuracy_vs_steps.png": steps_fig, "grid.png": lambda path: labelled_grid(plt, report, path)}
    if "curve_measured" in gc:
        files["gradient_consistency.png"] = consistency_fig
    if "points" in report.get("eps_curve", {}):
        files["accuracy_vs_eps.png"] = lambda path: eps_fig(plt, report, path)
    if loss_curves(report):
        files["loss_curves.png"] = lambda path: loss_fig(plt, report, path)
    return files, {"files": sorted(files), "accuracy_vs_steps": curves, "loss_curves": "see protocol.attacks[].stats.loss",
                   "grid": f"labelled: true label, clean and adversarial prediction on report draw {GRID_DRAW}"}


def loss_curves(report: dict) -> dict:
    """{loss name: {attack: [mean loss per iteration]}} of every attack that recorded one (its own EOT draws, the
    samples it ran on): a curve still rising at the last step is an attack that has not converged, one that is
    flat from the start follows no useful gradient."""
    out = {}
    for a in report["protocol"]["attacks"]:
        curve = a.get("stats", {}).get("loss")
        if curve and "skipped" not in a:
            out.setdefault(a["spec"]["loss"], {})[a["attack"]] = curve
    return out


def loss_fig(plt, report: dict, path) -> None:
    """One panel per loss (CE, margin, DLR have their own scales): each attack's mean loss against its iteration."""
    groups = loss_curves(report)
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 3.2), squeeze=False)
    for ax, (loss, curves) in zip(axes[0], sorted(groups.items())):
        for name, ys in curves.items():
            ax.plot(range(1, len(ys) + 1), ys, label=name)
        ax.set(xlabel="attack iteration", ylabel=f"mean {loss} loss (attack's draws)", title=report["defence"])
        ax.legend(fontsize=6)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def eps_fig(plt, report: dict, path) -> None:
    """Robust accuracy against ε: the single attack's points joined, the ensemble's point at ε and the clean
    accuracy at 0 marked apart (they come from the protocol, not from the rerun attack)."""
    curve = report["eps_curve"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    pts = curve["points"]
    ax.plot([p["eps"] for p in pts], [100 * p["mean"] for p in pts], color="grey", lw=0.8, zorder=1)
    for who, style in ((curve["attack"], "o"), ("ensemble", "s"), ("clean", "D")):
        mine = [p for p in pts if p["attack"] == who]
        err = [[100 * (p["mean"] - p["interval"][0]) for p in mine],
               [100 * (p["interval"][1] - p["mean"]) for p in mine]]
        ax.errorbar([p["eps"] for p in mine], [100 * p["mean"] for p in mine], yerr=err, fmt=style, capsize=3,
                    label=who if who != "ensemble" else "ensemble (at ε)")
    ax.axvline(report["threat_model"]["eps"], color="grey", ls=":", lw=0.8)
    ax.set(xlabel=f"{report['threat_model']['norm']} ε", ylabel="robust acc. % (95 % Wilson)", ylim=(-3, 103),
           title=f"{report['defence']} (n = {curve['n']}, {curve['draws']} draw(s))")
    ax.legend(fontsize=7)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)


def labelled_grid(plt, report: dict, path, k: int = 16) -> None:
    """Rows clean / adversarial / purified adversarial; each column titled with the true label and the clean and
    adversarial predictions on report draw GRID_DRAW."""
    g = grid_samples(report, k)
    rows = [(name, g[name]) for name in ("clean", "adversarial", "purified") if g[name] is not None]
    n = len(g["label"])
    fig, axes = plt.subplots(len(rows), n, figsize=(0.9 * n + 0.8, 1.05 * len(rows) + 0.5), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            img = imgs[j].detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=7)
            if i == 0:
                wrong = g["adv_pred"][j] != g["label"][j]
                ax.set_title(f"y {g['label'][j]}\nclean {g['clean_pred'][j]}\nadv {g['adv_pred'][j]}", fontsize=6,
                             color="crimson" if wrong else "black")
    fig.suptitle(f"{report['defence']}: predictions on report draw {GRID_DRAW} (red: adversarial prediction wrong)",
                 fontsize=7)
    fig.tight_layout(), fig.savefig(path, dpi=120), plt.close(fig)
