"""DDPM ancestral sampling (docs/METHODS.md §3.3).  u: (B, C, H, W) in [−1, 1] at index k−1 → u at index −1."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import ops
from ._step import device_table, guidance_terms, seeds_of, step_counter
from ..schedules import DDPMSchedule


def ddpm_coefficients(sched: DDPMSchedule, indices: list[int], variance: str) -> torch.Tensor:
    """(n, 7) float64 rows [q0, q1, p0, p1, p2, σ, s_g] of ops.sampler_step, one per index i:
    x̂₀ = (u − √(1−ᾱ_i)·ε)/√ᾱ_i,  u ← c1·x̂₀ + c2·u + σ_i·z + σ_i²·g  (no noise at i = 0)."""
    rows = []
    for i in indices:
        abar, abar_prev, beta = sched.abar(i), sched.abar(i - 1), float(sched.betas[i])
        c1 = beta * math.sqrt(abar_prev) / (1.0 - abar)
        c2 = (1.0 - abar_prev) * math.sqrt(1.0 - beta) / (1.0 - abar)
        var = sched.step_variance(i, variance)
        sigma = math.sqrt(var) if i > 0 else 0.0
        rows.append([1.0 / math.sqrt(abar), math.sqrt(1.0 - abar) / math.sqrt(abar), c1, c2, 0.0, sigma, var])
    return torch.tensor(rows, dtype=torch.float64)


def sample_ddpm(model, u: torch.Tensor, indices: list[int], *, noise, variance: str = "fixedsmall",
                clip_x0: bool = True, guidance: Callable | None = None, backend: str | None = None,
                checkpoint: Callable | None = None, trace: list | None = None) -> torch.Tensor:
    """Ancestral steps over consecutive descending DDPM indices (e.g. k−1, …, 0).

    noise: NoiseStreams (per-sample seeds; step k draws ξ(seed, k) inside the fused op).
    guidance(u, eps, i) → g, added to the posterior mean as σ_i²·g (its scale s_i already inside g); or (g, gw)
    with K terms g: (K, B, ...) and weights gw: (K, B), summed inside the step.
    checkpoint(body, u) → body(u): runs each step body (UNet, guidance, fused op), e.g. grad.StepCheckpoint, which
    keeps only u per step and recomputes the body in the backward pass (grad='full').
    trace: a list that receives the state u after every step (differentiable in every grad mode but the adjoint),
    e.g. for attack losses on intermediate states.
    """
    # Schedule: one coefficient table and one step counter on the device, built once.
    coef = device_table(ddpm_coefficients(model.schedule, indices, variance), u.device, ops.acc_dtype(u.dtype))
    steps = step_counter(len(indices), u.device)
    seeds, round = seeds_of(noise, u, needs_noise=True)
    # Main loop (i = k−1, …, 0): fixed length, Python ints only.
    for k, i in enumerate(indices):
        def step(u, k=k, i=i):
            eps = model.eps_at_index(u, i)
            g, gw = guidance_terms(guidance, u, eps, i)
            # Fused: x̂₀ (clamped), posterior mean, guidance shift and noise in one op.
            return ops.sampler_step(u, eps, coef, steps[k], seeds, g, gw, clip=clip_x0, round=round, backend=backend)

        u = step(u) if checkpoint is None else checkpoint(step, u)
        if trace is not None:
            trace.append(u)
    return u
