"""Audit figures (matplotlib, optional at run time; without it report.json says they were not drawn): robust
accuracy against attack steps with Wilson intervals (each exact attack at half and full steps, escalated reruns
included, from the per-sample records on the report draws) and the gradient-consistency curve (measured cosine of
two disjoint m-draw means, with the model's prediction)."""

from __future__ import annotations

from ...imageio import pyplot
from ..stats import wilson_ci


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
        return {}, {"skipped": "matplotlib is not installed (pip install matplotlib); the numbers are in report.json"}
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

    files = {"accuracy_vs_steps.png": steps_fig}
    if "curve_measured" in gc:
        files["gradient_consistency.png"] = consistency_fig
    return files, {"files": sorted(files), "accuracy_vs_steps": curves}
