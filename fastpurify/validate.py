"""Input checks for the public API: bad input gets a ValueError/TypeError that names the problem."""

from __future__ import annotations

import torch

RANGE_TOL = 1e-4  # attack libraries produce values like −2.98e-08 (torchattacks#136); allow float noise, not more


def check_images(x, *, channels: int | None = None, size: int | None = None, name: str = "x") -> torch.Tensor:
    """x must be a finite float NCHW tensor in [0, 1] (± RANGE_TOL).  Returns x clamped to [0, 1] in value only:
    the clamp is straight-through (gradient 1 everywhere), because torch's clamp has zero gradient at the bounds and
    would hide every pixel at exactly 0 or 1 from an attacker (docs/EVALUATION.md rule 2)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}; convert with x.float() / 255")
    if x.dim() != 4:
        raise ValueError(f"{name} must be NCHW (4 dims), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} has {x.shape[1]} channels; the model expects {channels} (shape {tuple(x.shape)})")
    if size is not None and tuple(x.shape[2:]) != (size, size):
        raise ValueError(f"{name} is {x.shape[2]}×{x.shape[3]}; the model expects {size}×{size}")
    with torch.no_grad():
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(f"{name} contains {bad} NaN/Inf values")
        lo, hi = float(x.min()), float(x.max())
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise ValueError(f"{name} must be in [0, 1] (tolerance {RANGE_TOL}), got min {lo:.4g}, max {hi:.4g}; "
                         "fastpurify takes unnormalised images, normalisation belongs inside the classifier")
    return x + (x.clamp(0.0, 1.0) - x).detach()


def check_seed(seed, batch: int, device: torch.device):
    """None | int | (B,) integer tensor → None or an int or an int64 (B,) tensor on `device`."""
    if seed is None or (isinstance(seed, int) and not isinstance(seed, bool)):
        return seed
    if isinstance(seed, torch.Tensor):
        if seed.is_floating_point() or seed.dtype == torch.bool or seed.shape != (batch,):
            raise ValueError(f"seed tensor must be integer with shape ({batch},), got {seed.dtype} {tuple(seed.shape)}")
        return seed.to(device=device, dtype=torch.int64)
    raise TypeError(f"seed must be None, an int, or a ({batch},) integer tensor of per-sample seeds, got {seed!r}")
