"""VP-SDE Euler–Maruyama, DiffPure's reverse process (docs/METHODS.md §3.1).  u at time s_0 = s* → u at s_end."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from .. import ops
from ..ops import STEP
from ._step import device_table, guidance_terms, seeds_of, step_counter
from ..schedules import VPSDE


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

    guidance(u, eps, s) → g (scale inside), added to the score −ε/σ (docs/METHODS.md §3.1, guided variant); or (g, gw).
    checkpoint(body, u): per-step recompute wrapper (grad.StepCheckpoint), as in sample_ddpm.
    adjoint: backpropagate with the continuous adjoint (vpsde_adjoint, below): O(1) memory in steps, input only.
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

    return vpsde_adjoint(model, u, grid, coef, seeds, round, run, backend=backend)


# ---------------------------------------------------------------------------------------------- adjoint (VP-SDE)
class _VPSDEAdjoint(torch.autograd.Function):
    """Euler–Maruyama over the grid forward; the continuous adjoint backward (DiffPure's sdeint_adjoint, inputs only).

    Forward step j (coefficient row [.., p1, p2, σ, ..]):  u_{j+1} = p1·u_j + p2·ε(u_j, s_j) + σ·z_j.
    Backward, j = n−1 … 0, one network forward + VJP per step, at the reconstructed state v = u_{j+1}:
        u_j ≈ (u_{j+1} − p2·ε(v, s_j) − σ·z_j) / p1       (reverse-time EM, the same Brownian increment z_j)
        a_j  = p1·a_{j+1} + p2·(∂ε/∂u (v, s_j))ᵀ a_{j+1}
    The noise is additive (σ does not depend on u), so Itô and Stratonovich adjoints agree.  Both the state and the
    Jacobian are taken at u_{j+1} instead of u_j: an O(dt) error that vanishes as dt → 0 (the solver error of §9).
    """

    @staticmethod
    def forward(ctx, u, run, reverse):
        ctx.reverse = reverse
        out = run(u)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return ctx.reverse(u, grad), None, None


def vpsde_adjoint(model, u: torch.Tensor, grid: list[float], coef: torch.Tensor, seeds: torch.Tensor, round: int,
                  run: Callable[[torch.Tensor], torch.Tensor], backend: str | None = None) -> torch.Tensor:
    """The VP-SDE sampler `run(u)` with an O(1)-memory adjoint backward (gradient for u only, weights frozen)."""
    rows = coef.tolist()  # host copy once: the backward loop reads Python floats, never syncs per step

    def reverse(u_end: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        v = u_end.detach()
        a = a.to(v.dtype)
        for j in range(len(grid) - 2, -1, -1):
            _, _, _, p1, p2, sigma, _ = rows[j]
            with torch.enable_grad():
                vv = v.requires_grad_(True)
                eps = model.eps_at_time(vv, grid[j])
                (vjp,) = torch.autograd.grad(eps, vv, a)
            z = ops.normal(seeds, tuple(v.shape), step=j, purpose=STEP, round=round, backend=backend).to(v.dtype)
            v = ((v - p2 * eps.detach() - sigma * z) / p1).detach()
            a = p1 * a + p2 * vjp
        return a

    return _VPSDEAdjoint.apply(u, run, reverse)
