"""Accuracy over N draws per image: mean (Avg.Rob), worst (all N correct), majority vote, Wilson intervals."""

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
    """(B, N) predictions → (B,) most frequent class per row, ties to the lowest class index."""
    classes = classes or int(preds.max()) + 1
    return F.one_hot(preds, classes).sum(1).argmax(1)


def summarize(preds: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracies of predictions (B, N) — N draws per image — against labels (B,), with 95 % Wilson intervals over
    the B images (for the mean: the per-image accuracy treated as one binomial outcome per image)."""
    if preds.numel() == 0:
        return {"n": 0, "draws": 0, "mean": None, "worst": None, "majority": None}
    correct = preds == y[:, None]
    n = preds.shape[0]
    classes = int(max(int(preds.max()), int(y.max()))) + 1
    out = {"n": n, "draws": preds.shape[1], "mean": float(correct.float().mean()),
           "worst": float(correct.all(1).float().mean()),
           "majority": float((majority_vote(preds, classes) == y).float().mean())}
    for k in ("mean", "worst", "majority"):
        out[f"{k}_ci95"] = wilson_ci(out[k], n)
    return out
