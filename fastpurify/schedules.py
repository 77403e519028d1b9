"""Noise schedules, built once as tensors (docs/METHODS.md §1.2–1.3).

Discrete DDPM indices are 0-based: ᾱ_i = ∏_{j≤i} (1 − β_j), and ᾱ_{−1} := 1.
Everything is computed in float64 and stored as float64; samplers cast the rows they need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DDPMSchedule:
    """Linear-β DDPM schedule.  All tensors have shape (T,) and dtype float64."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    def abar(self, i: int) -> float:
        """ᾱ_i with the convention ᾱ_{−1} = 1 (a Python float: indices are Python ints, never tensors)."""
        return 1.0 if i < 0 else float(self.alphas_cumprod[i])

    def posterior_variance(self, i: int) -> float:
        """β̃_i = β_i (1 − ᾱ_{i−1}) / (1 − ᾱ_i); β̃_0 = 0."""
        return float(self.betas[i]) * (1.0 - self.abar(i - 1)) / (1.0 - self.abar(i))

    def step_variance(self, i: int, variance: str) -> float:
        """σ_i² for the ancestral step at index i: 'fixedsmall' = β̃_i, 'fixedlarge' = β_i (β̃_1 at i = 0)."""
        if variance == "fixedsmall":
            return self.posterior_variance(i)
        if variance == "fixedlarge":
            return self.posterior_variance(1) if i == 0 else float(self.betas[i])
        raise ValueError(f"unknown variance {variance!r}; expected 'fixedsmall' or 'fixedlarge'")


def get_ddpm_schedule(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> DDPMSchedule:
    """The DDPM linear schedule β_i = linspace(beta_start, beta_end, T)[i]."""
    betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    return DDPMSchedule(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))


@dataclass(frozen=True)
class VPSDE:
    """Continuous VP-SDE: β(s) = β_min + s(β_max − β_min), ᾱ(s) = exp(−½(β_max−β_min)s² − β_min s)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def beta(self, s: float) -> float:
        return self.beta_min + s * (self.beta_max - self.beta_min)

    def abar(self, s: float) -> float:
        return math.exp(-0.5 * (self.beta_max - self.beta_min) * s * s - self.beta_min * s)

    def sigma(self, s: float) -> float:
        return math.sqrt(1.0 - self.abar(s))


def get_vpsde_schedule(beta_min: float = 0.1, beta_max: float = 20.0) -> VPSDE:
    return VPSDE(beta_min, beta_max)


def vpsde_grid(s_star: float, dt: float = 1e-3, s_end: float = 1e-5) -> list[float]:
    """Euler–Maruyama time grid s_0 = s* > s_1 > … > s_n = s_end with steps of dt, the last one shortened
    so the grid ends exactly at s_end (torchsde's behaviour, docs/METHODS.md §3.1)."""
    if not s_end < s_star:
        raise ValueError(f"s* = {s_star} must exceed s_end = {s_end}")
    n = math.ceil((s_star - s_end) / dt - 1e-9)
    return [s_star - j * dt for j in range(n)] + [s_end]


def respaced_indices(k: int, n: int, rule: str = "uniform") -> list[int]:
    """n descending DDPM indices for a respaced sampler starting from k steps of 1000 (docs/METHODS.md §3.5).

    'uniform'  — round(linspace(k−1, 0, n)): first index k−1, last 0 (fastpurify's default);
    'lee_kim'  — stride d = k // n: {d−1, 2d−1, …, (k//d)·d − 1} (Lee & Kim);
    'trailing' — diffusers 'trailing' spacing over 1000 with stride 1000 // (k // n), last n kept (ADBM).
    """
    if not 1 <= n <= k:
        raise ValueError(f"need 1 <= steps <= k, got steps={n}, k={k}")
    if rule == "uniform":
        idx = torch.linspace(k - 1, 0, n, dtype=torch.float64).round().long().tolist()
    elif rule == "lee_kim":
        d = k // n
        idx = [d * m - 1 for m in range(k // d, 0, -1)]
    elif rule == "trailing":
        num = 1000 // (k // n)  # diffusers: set_timesteps(num), timesteps round(arange(1000, 0, −1000/num)) − 1
        idx = (torch.arange(1000.0, 0.0, -1000.0 / num, dtype=torch.float64).round() - 1).long().tolist()[-n:]
    else:
        raise ValueError(f"unknown respacing rule {rule!r}; expected 'uniform', 'lee_kim' or 'trailing'")
    return [int(i) for i in idx]
