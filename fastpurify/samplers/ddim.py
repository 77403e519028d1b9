"""Generalised-η DDIM over a (respaced) index list (METHODS.md §3.4).  η = 1: ancestral on the subsequence."""

from __future__ import annotations

import math

import torch


def sample_ddim(model, u: torch.Tensor, indices: list[int], *, noise, eta: float = 0.0,
                clip_x0: bool = False) -> torch.Tensor:
    """Steps i → j over consecutive entries of `indices` (descending), the last jump going to j = −1 (ᾱ = 1)."""
    sched = model.schedule
    for pos, i in enumerate(indices):
        j = indices[pos + 1] if pos + 1 < len(indices) else -1
        abar_i, abar_j = sched.abar(i), sched.abar(j)
        eps = model.eps_at_index(u, i)
        x0 = (u - math.sqrt(1.0 - abar_i) * eps) / math.sqrt(abar_i)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        # c1: stochastic part (η·σ of DDIM), c2: the direction pointing to u_j.
        c1 = eta * math.sqrt(max((1.0 - abar_i / abar_j) * (1.0 - abar_j) / (1.0 - abar_i), 0.0))
        c2 = math.sqrt(max(1.0 - abar_j - c1 * c1, 0.0))
        u = math.sqrt(abar_j) * x0 + c2 * eps
        if c1 > 0.0:
            u = u + c1 * noise(i)
    return u
