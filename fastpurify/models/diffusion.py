"""The denoiser the samplers drive: an ε-prediction network plus its time convention (docs/METHODS.md §1.4).

Samplers never call the network directly; they ask for ε at a DDPM index i (discrete samplers) or at a
continuous VP time s (VP-SDE), and this wrapper turns that into the network's own time input τ.
"""

from __future__ import annotations

import torch
from torch import nn

from ..schedules import DDPMSchedule, get_ddpm_schedule


class EpsDiffusion(nn.Module):
    """An ε-predictor ``net(u, τ)`` with its schedule and input geometry.

    time_input:
      'index'      — trained on DDPM indices: τ = i; at continuous s we use τ = 1000·s − 1 (ᾱ(s) ≈ ᾱ_{1000s−1}).
      'continuous' — score-SDE style: τ = 999·s; at index i we use s = (i + 1) / 1000.
    """

    def __init__(self, net: nn.Module, *, image_size: int, channels: int, time_input: str = "index",
                 schedule: DDPMSchedule | None = None, name: str = "custom"):
        super().__init__()
        if time_input not in ("index", "continuous"):
            raise ValueError(f"time_input must be 'index' or 'continuous', got {time_input!r}")
        self.net = net
        self.image_size, self.channels, self.time_input, self.name = image_size, channels, time_input, name
        self.schedule = schedule or get_ddpm_schedule()

    def tau_at_index(self, i: int) -> float:
        """The network's time input at DDPM index i (a Python float: samplers never branch on tensors)."""
        return float(i) if self.time_input == "index" else 999.0 * (i + 1) / 1000.0

    def tau_at_time(self, s: float) -> float:
        """The network's time input at continuous VP time s."""
        return max(1000.0 * s - 1.0, 0.0) if self.time_input == "index" else 999.0 * s

    def eps_at_index(self, u: torch.Tensor, i: int) -> torch.Tensor:
        return self(u, torch.full((u.shape[0],), self.tau_at_index(i), device=u.device, dtype=torch.float32))

    def eps_at_time(self, u: torch.Tensor, s: float) -> torch.Tensor:
        return self(u, torch.full((u.shape[0],), self.tau_at_time(s), device=u.device, dtype=torch.float32))

    def forward(self, u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        return self.net(u, tau)
