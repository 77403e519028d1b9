"""A small CNN classifier for the embedded digits benchmark.  Input: (B, C, H, W) in [0, 1] → logits (B, classes)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, in_ch: int = 1, classes: int = 10, width: int = 32):
        super().__init__()
        self.config = dict(in_ch=in_ch, classes=classes, width=width)
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(8 * w, 128), nn.ReLU(), nn.Linear(128, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalisation lives inside the model (docs/CONVENTIONS.md §1.1): inputs are plain [0, 1] images.
        return self.head(self.features(2.0 * x - 1.0))
