"""VP-SDE Euler–Maruyama, DiffPure's reverse process (METHODS.md §3.1).  u at time s_0 = s* → u at s_end."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import ops
from ._step import device_table, guidance_terms, seeds_of, step_counter
from .schedules import VPSDE


def vpsde_coefficients(grid: list[float], sde: VPSDE) -> torch.Tensor:
    """(n, 7) float64 rows [q0, q1, p0, p1, p2, σ, s_g] of ops.sampler_step for the grid's steps (h = s_j − s_{j+1}):
    u ← u + h·[½β(s)u − β(s)·ε/σ(s) + β(s)·g] + √(β(s)h)·z  =  (1 + ½βh)·u − (hβ/σ)·ε + √(βh)·z + hβ·g."""
    rows = []
    for j in range(len(grid) - 1):
        s, h = grid[j], grid[j] - grid[j + 1]
        beta, sigma = sde.beta(s), sde.sigma(s)
        rows.append([0.0, 0.0, 0.0, 1.0 + 0.5 * beta * h, -h * beta / sigma, math.sqrt(beta * h), h * beta])
    return torch.tensor(rows, dtype=torch.float64)


def sample_vpsde(model, u: torch.Tensor, grid: list[float], *, noise, sde: VPSDE, guidance: Callable | None = None,
                 backend: str | None = None, checkpoint: Callable | None = None, adjoint: bool = False,
                 trace: list | None = None) -> torch.Tensor:
    """Euler–Maruyama over the descending grid (vpsde_grid); step j draws ξ(seed, j) inside the fused op.

    guidance(u, eps, s) → g (scale inside), added to the score −ε/σ (METHODS.md §3.1, guided variant); or (g, gw).
    checkpoint(body, u): per-step recompute wrapper (grad.StepCheckpoint), as in sample_ddpm.
    adjoint: backpropagate with the continuous adjoint (grad.vpsde_adjoint): O(1) memory in steps, input only.
    trace: a list that receives u after every step (as in sample_ddpm; not with the adjoint).
    """
    coef = device_table(vpsde_coefficients(grid, sde), u.device, ops.acc_dtype(u.dtype))
    steps = step_counter(len(grid) - 1, u.device)
    seeds, round = seeds_of(noise, u, needs_noise=True)

    def run(u):
        for j in range(len(grid) - 1):
            def step(u, j=j):
                eps = model.eps_at_time(u, grid[j])
                g, gw = guidance_terms(guidance, u, eps, grid[j])
                # Reverse drift with score −ε/σ; fresh noise every step (also on the last one).
                return ops.sampler_step(u, eps, coef, steps[j], seeds, g, gw, clip=False, round=round,
                                        backend=backend)

            u = step(u) if checkpoint is None else checkpoint(step, u)
            if trace is not None:
                trace.append(u)
        return u

    if not adjoint:
        return run(u)
    if guidance is not None or checkpoint is not None or trace is not None:
        raise ValueError("the VP-SDE adjoint takes no guidance, checkpoint or trace (it stores no per-step state)")
    from ..grad import vpsde_adjoint

    return vpsde_adjoint(model, u, grid, coef, seeds, round, run, backend=backend)
