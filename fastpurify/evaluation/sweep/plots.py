"""Report figures: robust vs clean per method, robust vs t*, accuracy vs attack iterations (matplotlib, optional
at run time), and per-method sample grids of clean / adversarial / purified images (`fastpurify.imageio`, plus a
labelled version when matplotlib is there).  Everything is drawn from the report and the saved images only, so
the files are the same on every run.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from ...imageio import image_grid, pyplot, write_png
from .merge import Merged


def _save(fig, path: Path, plt) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: same bytes across matplotlib builds
    plt.close(fig)


PCT = 100.0  # plots in %, as the report's table


def write_plots(report: dict, dest: Path) -> dict:
    """The figures that the report's data supports; returns {name: file name}."""
    plt = pyplot()
    if plt is None:
        return {}
    results, written = report["results"], {}
    tag = " (PARTIAL)" if report["partial"] else ""
    for title, plot in (("robust vs clean", _robust_vs_clean), ("robust vs t*", _robust_vs_t_star),
                        ("accuracy vs attack iterations", _accuracy_vs_iterations)):
        name = plot(plt, results, tag, dest)
        if name:
            written[title] = name
    return written


def _robust_vs_clean(plt, results: list[dict], tag: str, dest: Path) -> str:
    fig, ax = plt.subplots(figsize=(5, 4))
    for r in results:
        if r["avg_rob"] is None:
            continue
        lo, hi = r["ci95"]["avg_rob"]
        rob, clean = PCT * r["avg_rob"], PCT * r["clean"]["mean"]
        ax.errorbar(clean, rob, yerr=[[rob - PCT * lo], [PCT * hi - rob]], fmt="o", capsize=3)
        ax.annotate(r["method"], (clean, rob), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("clean accuracy, % (mean over N)"), ax.set_ylabel("robust accuracy, % (mean over N, 95 % CI)")
    ax.set_title(f"robust vs clean{tag}")
    _save(fig, dest / "robust_vs_clean.png", plt)
    return "robust_vs_clean.png"


def _robust_vs_t_star(plt, results: list[dict], tag: str, dest: Path) -> str | None:
    """Methods run at several t*: robust and clean accuracy against t* (None: no such method)."""
    by_name = defaultdict(list)
    for r in results:
        if r["t_star_steps"] is not None and r["avg_rob"] is not None:
            by_name[r["method_name"]].append(r)
    families = {k: sorted(v, key=lambda r: r["t_star_steps"]) for k, v in by_name.items()
                if len({r["t_star_steps"] for r in v}) > 1}
    if not families:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, rows in sorted(families.items()):
        t = [r["t_star_steps"] for r in rows]
        line = ax.plot(t, [PCT * r["avg_rob"] for r in rows], marker="o", label=f"{name} robust")[0]
        ax.plot(t, [PCT * r["clean"]["mean"] for r in rows], ls="--", color=line.get_color(),
                label=f"{name} clean")
    ax.set_xlabel("t* (steps of 1000)"), ax.set_ylabel("accuracy, % (mean over N)"), ax.legend(fontsize=7)
    ax.set_title(f"accuracy vs t*{tag}")
    _save(fig, dest / "robust_vs_t_star.png", plt)
    return "robust_vs_t_star.png"


def _accuracy_vs_iterations(plt, results: list[dict], tag: str, dest: Path) -> str | None:
    """Per-step curves from the batch lines (EOT accuracy of the best iterate so far, on the attack's own draws);
    else each attack alone vs its step count, attacks that differ only in their step count forming a line."""
    fig, ax = plt.subplots(figsize=(5, 4))
    drawn, per_step = False, False
    for r in results:
        groups = defaultdict(list)
        for name, a in r["attacks"].items():
            if a.get("best_curve"):
                ax.plot(range(len(a["best_curve"])), [PCT * v for v in a["best_curve"]],
                        label=f"{r['method']} · {name}")
                drawn = per_step = True
            elif a["mean"] is not None:
                groups[(a["grad_mode"], a["eot"], a["loss"], a["kind"])].append((a["steps"], PCT * a["mean"]))
        for (grad, eot, loss, _), pts in sorted(groups.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    label=f"{r['method']} · {grad}, EOT {eot}, {loss}")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("attack iteration")
    ax.set_ylabel("EOT accuracy of the best iterate, % (attack draws)" if per_step
                  else "robust accuracy, attack alone, % (mean over N)")
    ax.legend(fontsize=6), ax.set_title(f"accuracy vs attack iterations{tag}")
    _save(fig, dest / "accuracy_vs_iterations.png", plt)
    return "accuracy_vs_iterations.png"


def _load_images(mg: Merged, method: str, ids: list[int]) -> dict | None:
    """clean / adv / purified tensors of `ids` from the saved safetensors shards, or None if any is missing."""
    from safetensors import safe_open

    rows = {"clean": [], "adv": [], "purified": [], "purified_pred": []}
    for i in ids:
        rec = mg.rows[method].get(i)
        if rec is None or not rec.get("adv_path"):
            return None
        file = mg.out / rec["adv_path"].split("#")[0]
        if not file.is_file():
            return None
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            for kind, images in rows.items():
                key = f"{method}/{i}/{kind}"
                if key not in keys:
                    return None
                images.append(f.get_tensor(key))
    return {k: torch.stack(v) for k, v in rows.items()}


def sample_grids(mg: Merged, dest: Path) -> list[dict]:
    """grid_<method>.png per method (rows: clean, adversarial, purified adversarial) when the sweep saved its
    images (save_adv = true); labels and predictions go into the report (and onto grid_<method>_labeled.png)."""
    n = mg.stored["config"].get("grid", 0)
    ids = mg.ids[:n]
    grids = []
    for method in mg.methods if ids and mg.stored["config"].get("save_adv") else []:
        imgs = _load_images(mg, method, ids)
        if imgs is None:
            continue
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in method)
        file = f"grid_{safe}.png"
        write_png(dest / file, image_grid([imgs["clean"], imgs["adv"], imgs["purified"]], scale=4))
        recs = [mg.rows[method][i] for i in ids]
        g = {"method": method, "file": file, "ids": ids, "labels": [r["label"] for r in recs],
             "clean_preds": [r["clean_preds"][0] for r in recs], "adv_preds": [r["adv_preds"][0] for r in recs],
             "purified_preds": imgs["purified_pred"].reshape(-1).tolist()}
        labeled = _labeled_grid(imgs, g, dest / f"grid_{safe}_labeled.png")
        if labeled:
            g["labeled_file"] = labeled
        grids.append(g)
    return grids


def _labeled_grid(imgs: dict, g: dict, path: Path) -> str | None:
    plt = pyplot()
    if plt is None:
        return None
    k = imgs["clean"].shape[0]
    fig, axes = plt.subplots(3, k, figsize=(1.2 * k, 4), squeeze=False)
    titles = [[f"y={y} p={p}" for y, p in zip(g["labels"], g["clean_preds"])], ["adv"] * k,
              [f"p={p}" for p in g["purified_preds"]]]
    for row, kind in enumerate(("clean", "adv", "purified")):
        for j in range(k):
            img = imgs[kind][j].float().clamp(0, 1)
            ax = axes[row][j]
            ax.imshow((img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(titles[row][j], fontsize=7)
        axes[row][0].set_ylabel(kind, fontsize=8)
    fig.suptitle(f"{g['method']}: clean (label, prediction) / adversarial / purified (prediction)", fontsize=8)
    _save(fig, path, plt)
    return path.name
