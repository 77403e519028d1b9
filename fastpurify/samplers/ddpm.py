"""DDPM ancestral sampling (METHODS.md §3.3).  u: (B, C, H, W) in [−1, 1] at index k−1 → u at index −1."""

from __future__ import annotations

import math
from typing import Callable

import torch


def sample_ddpm(model, u: torch.Tensor, indices: list[int], *, noise, variance: str = "fixedsmall",
                clip_x0: bool = True, guidance: Callable | None = None) -> torch.Tensor:
    """Ancestral steps over consecutive descending DDPM indices (e.g. k−1, …, 0).

    guidance(u, eps, i) → g, added to the posterior mean as σ_i²·g (its scale s_i already inside g).
    """
    sched = model.schedule
    for i in indices:
        abar, abar_prev, beta = sched.abar(i), sched.abar(i - 1), float(sched.betas[i])
        eps = model.eps_at_index(u, i)
        # Tweedie estimate x̂₀ and the posterior mean μ̃ = c1·x̂₀ + c2·u.
        x0 = (u - math.sqrt(1.0 - abar) * eps) / math.sqrt(abar)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        c1 = beta * math.sqrt(abar_prev) / (1.0 - abar)
        c2 = (1.0 - abar_prev) * math.sqrt(1.0 - beta) / (1.0 - abar)
        mean = c1 * x0 + c2 * u
        var = sched.step_variance(i, variance)
        if guidance is not None:
            mean = mean + var * guidance(u, eps, i)
        # No noise on the last step (i = 0).
        u = mean + math.sqrt(var) * noise(i) if i > 0 else mean
    return u
