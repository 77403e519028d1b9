"""Generalised-η DDIM over a (respaced) index list (docs/METHODS.md §3.4).  η = 1: ancestral on the subsequence."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import ops
from ._step import device_table, seeds_of, step_counter
from ..schedules import DDPMSchedule


def ddim_coefficients(sched: DDPMSchedule, indices: list[int], eta: float) -> torch.Tensor:
    """(n, 7) float64 rows [q0, q1, p0, p1, p2, σ, s_g] of ops.sampler_step for the jumps i → j over consecutive
    entries of `indices`, the last one to j = −1 (ᾱ = 1):  u ← √ᾱ_j·x̂₀ + c1·z + c2·ε."""
    rows = []
    for pos, i in enumerate(indices):
        j = indices[pos + 1] if pos + 1 < len(indices) else -1
        abar_i, abar_j = sched.abar(i), sched.abar(j)
        # c1: stochastic part (η·σ of DDIM), c2: the direction pointing to u_j.
        c1 = eta * math.sqrt(max((1.0 - abar_i / abar_j) * (1.0 - abar_j) / (1.0 - abar_i), 0.0))
        c2 = math.sqrt(max(1.0 - abar_j - c1 * c1, 0.0))
        rows.append([1.0 / math.sqrt(abar_i), math.sqrt(1.0 - abar_i) / math.sqrt(abar_i), math.sqrt(abar_j), 0.0,
                     c2, c1, 0.0])
    return torch.tensor(rows, dtype=torch.float64)


def sample_ddim(model, u: torch.Tensor, indices: list[int], *, noise, eta: float = 0.0, clip_x0: bool = False,
                backend: str | None = None, checkpoint: Callable | None = None, trace: list | None = None
                ) -> torch.Tensor:
    """Steps i → j over consecutive entries of `indices` (descending).  noise: NoiseStreams (None allowed at η = 0).
    checkpoint(body, u): per-step recompute wrapper (grad.StepCheckpoint), as in sample_ddpm.  trace: as there."""
    coef = device_table(ddim_coefficients(model.schedule, indices, eta), u.device, ops.acc_dtype(u.dtype))
    steps = step_counter(len(indices), u.device)
    seeds, round = seeds_of(noise, u, needs_noise=eta > 0.0)
    for k, i in enumerate(indices):
        def step(u, k=k, i=i):
            eps = model.eps_at_index(u, i)
            return ops.sampler_step(u, eps, coef, steps[k], seeds, clip=clip_x0, round=round, backend=backend)

        u = step(u) if checkpoint is None else checkpoint(step, u)
        if trace is not None:
            trace.append(u)
    return u
