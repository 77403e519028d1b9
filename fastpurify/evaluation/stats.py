"""Accuracy over N draws per image: mean (Avg.Rob), worst (all N correct), majority vote (a tie is not robust),
Wilson intervals, and the paired interval of a drop between two candidates on the same images and draws."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def wilson_ci(p: float, n: int, z: float = 1.96) -> list[float]:
    """95 % Wilson interval for an accuracy p measured on n samples."""
    if n == 0:
        return [0.0, 1.0]
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / d
    return [round(max(0.0, c - h), 4), round(min(1.0, c + h), 4)]


def half_width(p: float, n: int) -> float:
    """Half the width of the Wilson interval: the slack of 'A is not better than B' checks."""
    lo, hi = wilson_ci(p, n)
    return (hi - lo) / 2


def majority_vote(preds: torch.Tensor, classes: int | None = None) -> torch.Tensor:
    """(B, N) predictions → (B,) most frequent class per row, ties to the lowest class index (a label only: for
    'is the majority right' use majority_correct, which counts a tie as not robust)."""
    classes = classes or int(preds.max()) + 1
    return F.one_hot(preds, classes).sum(1).argmax(1)


def majority_correct(preds: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, N) predictions, labels (B,) → (B,) bool: the true class has strictly more votes than every other class.
    A tie is not robust (ties must not go to whichever class has the lowest index)."""
    classes = int(max(int(preds.max()), int(y.max()))) + 1
    votes = F.one_hot(preds, classes).sum(1)
    true = votes.gather(1, y[:, None])[:, 0]
    other = votes.scatter(1, y[:, None], -1).amax(1)
    return true > other


# The paired checks' margin: 'ok' means the upper end of the paired 95 % interval of a drop is at most this.
PAIRED_MARGIN = 0.03
BOOTSTRAP = 4000


def paired_drop(a: torch.Tensor, b: torch.Tensor, *, floor: int = 0, n_boot: int = BOOTSTRAP,
                seed: int = 0) -> dict | None:
    """How much lower accuracy b is than a on the same samples and draws: a, b (n, N) correctness (0/1) of two
    candidates per sample and report draw.  Returns the drop mean(a) − mean(b), its 95 % interval from a paired
    bootstrap over samples (a sample keeps its N draws: draws of one image are not independent), and the number
    of samples down (b less often correct) / up.  floor: samples of the evaluation a cascaded attack skipped (wrong
    on every draw already, so 0 at both lengths): they join with a drop of 0, which puts the drop on the scale of
    the robust accuracy over all samples, the figure the report gives.  Deterministic (fixed generator).  None when
    n = 0."""
    a, b = a.double(), b.double()
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same samples and draws, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] == 0:
        return None
    d = torch.cat([(a - b).mean(1), torch.zeros(floor, dtype=torch.float64)])  # per-sample drop
    n = d.shape[0]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=g)
    boot = d[idx].mean(1).sort().values
    lo, hi = boot[int(0.025 * (n_boot - 1))], boot[round(0.975 * (n_boot - 1))]
    return {"drop": round(float(d.mean()), 6), "ci95": [round(float(lo), 6), round(float(hi), 6)], "n": n,
            **({"floor": floor} if floor else {}),
            "draws": a.shape[1], "down": int((d > 0).sum()), "up": int((d < 0).sum()),
            "method": f"paired bootstrap over samples ({n_boot} resamples)"}


def summarize(preds: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracies of predictions (B, N) — N draws per image — against labels (B,), with 95 % Wilson intervals over
    the B images (for the mean: the per-image accuracy treated as one binomial outcome per image)."""
    if preds.numel() == 0:
        return {"n": 0, "draws": 0, "mean": None, "worst": None, "majority": None}
    correct = preds == y[:, None]
    n = preds.shape[0]
    out = {"n": n, "draws": preds.shape[1], "mean": float(correct.float().mean()),
           "worst": float(correct.all(1).float().mean()),
           "majority": float(majority_correct(preds, y).float().mean())}
    for k in ("mean", "worst", "majority"):
        out[f"{k}_ci95"] = wilson_ci(out[k], n)
    return out
