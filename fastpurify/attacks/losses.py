"""Attack losses on logits (B, classes) → one value per sample (B,), each to be *maximised* by the attacker.

- 'ce'     cross-entropy (Madry et al.);
- 'margin' max_{j≠y} z_j − z_y (Carlini & Wagner's margin, unbounded above: keeps pushing past the boundary);
- 'dlr'    AutoAttack's difference-of-logits ratio −(z_y − max_{j≠y} z_j) / (z_π1 − z_π3 + 1e-12), scale invariant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def true_class_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j (B,): positive when y is predicted, negative when an attack succeeded."""
    z_y = logits.gather(1, y[:, None])[:, 0]
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return z_y - other


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -true_class_margin(logits, y)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] < 3:
        raise ValueError("the DLR loss needs at least 3 classes")
    top = logits.sort(1, descending=True).values
    return -true_class_margin(logits, y) / (top[:, 0] - top[:, 2] + 1e-12)


LOSSES = {"ce": ce_loss, "margin": margin_loss, "dlr": dlr_loss}


def get_loss(name: str):
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; expected one of {', '.join(LOSSES)}")
    return LOSSES[name]
