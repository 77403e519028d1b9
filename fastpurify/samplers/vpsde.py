"""VP-SDE Euler–Maruyama, DiffPure's reverse process (METHODS.md §3.1).  u at time s_0 = s* → u at s_end."""

from __future__ import annotations

import math

import torch

from .schedules import VPSDE


def sample_vpsde(model, u: torch.Tensor, grid: list[float], *, noise, sde: VPSDE) -> torch.Tensor:
    """u ← u + h·[½β(s)u − β(s)·ε/σ(s)] + √(β(s)h)·z over the descending grid (vpsde_grid); step j uses noise(j)."""
    for j in range(len(grid) - 1):
        s, h = grid[j], grid[j] - grid[j + 1]
        beta, sigma = sde.beta(s), sde.sigma(s)
        eps = model.eps_at_time(u, s)
        # Reverse drift with score −ε/σ; the diffusion term is fresh noise every step (also on the last one).
        u = u + h * (0.5 * beta * u - beta / sigma * eps) + math.sqrt(beta * h) * noise(j)
    return u
