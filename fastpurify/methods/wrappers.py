"""The wrappers around a purifier that methods and sweeps use: `MethodPurifier` (a built method plus its report
description) and `ResizePurifier` (purify at the diffusion model's resolution)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..api import InferenceModule


class MethodPurifier(InferenceModule):
    """A purifier plus the description reports need (method, resolved sampler config, guidance settings)."""

    def __init__(self, name: str, inner: nn.Module, info: dict):
        super().__init__()
        self.name, self.inner, self.info = name, inner, info

    @property
    def nfe(self) -> int:
        return self.info["nfe"]

    @property
    def last_nfe(self) -> int | None:
        """Network evaluations counted in the last forward pass."""
        return self.inner.last_nfe

    def first_round(self):
        return self.inner.first_round()

    def forward(self, x, seed=None, round: int = 0, grad: str | None = None, trace: list | None = None):
        """Purify x; seed, grad and trace as for `Purifier.forward` (grad overrides the mode for this call)."""
        return self.inner(x, seed=seed, round=round, grad=grad, trace=trace)

    def describe(self) -> dict:
        return {"method": self.name, **self.info, **self.first_round().grad_config()}


class ResizePurifier(nn.Module):
    """Purify at the diffusion model's resolution, return at the input's: bilinear (align_corners=False) resize
    up before and back after, both inside autograd (DiffPure / Lee & Kim ImageNet: 224 → 256 → 224).

    Wraps a `Purifier`, `MethodPurifier` or `MultiRound` (size: the model's resolution; default
    `purifier.model.image_size`); passes `grad=` / `trace=` through for the attacks and reports the wrapped
    purifier's NFE, so it is usable in `PurifiedClassifier` and the evaluation protocol unchanged.
    """

    def __init__(self, purifier: nn.Module, size: int | None = None):
        super().__init__()
        self.purifier = purifier
        self.size = int(size if size is not None else purifier.model.image_size)

    @property
    def nfe(self):  # the planned network calls (MethodPurifier/MultiRound: .nfe; Purifier: .config.nfe)
        config = getattr(self.purifier, "config", None)
        return getattr(self.purifier, "nfe", getattr(config, "nfe", None))

    @property
    def last_nfe(self):
        return getattr(self.purifier, "last_nfe", None)

    def describe(self) -> dict:
        inner = self.purifier
        info = inner.describe() if hasattr(inner, "describe") else {"config": inner.config.as_dict()}
        return {**info, "resize_to": self.size}

    def first_round(self):
        return self.purifier.first_round()

    def forward(self, x: torch.Tensor, seed=None, round: int = 0, grad=None, trace=None) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"x must be an NCHW tensor, got {getattr(x, 'shape', type(x))}")
        n, size = self.size, tuple(x.shape[-2:])
        u = x if size == (n, n) else F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)
        y = self.purifier(u, seed=seed, round=round, grad=grad, trace=trace)
        return y if size == (n, n) else F.interpolate(y, size=size, mode="bilinear", align_corners=False)
