"""Per-sample noise streams for one purification (docs/METHODS.md §1.5, docs/DESIGN.md decision 3)."""

from __future__ import annotations

import torch

from .. import ops
from ..ops import STEP


class NoiseStreams:
    """ξ(seed_b, step, purpose, round) for a batch: `noise(step)` → (B, C, H, W) float32 on the seeds' device.

    The same (seed, step, purpose, round) always gives the same draw, whatever the batch size or order.
    Samplers hand `seeds` and `round` to the fused step op, which draws step k's noise ξ(seed_b, k, STEP, round)
    itself; calling `noise(k)` materialises exactly that draw (tests, explicit-noise code).
    """

    def __init__(self, seeds: torch.Tensor, shape: tuple[int, ...], round: int = 0, backend: str | None = None):
        self.seeds, self.shape, self.round, self.backend = seeds, tuple(shape), round, backend

    def __call__(self, step: int, purpose: int = STEP) -> torch.Tensor:
        return ops.normal(self.seeds, self.shape, step=step, purpose=purpose, round=self.round, backend=self.backend)
