"""GDMP pixel-distance guidance (Wang et al., arXiv 2205.14969; docs/METHODS.md §5).

At DDPM index i the posterior mean is shifted by σ_i²·s_i·∇_u D(u, a_i), with the target a_i the input
diffused to level i with fresh noise (a_i = √ᾱ_i·u_in + √(1−ᾱ_i)·z′) or the input itself, D = −MSE or SSIM,
and s_i = √(1−ᾱ_i) / (m·√ᾱ_i), m = (2·ptb/255)/3/a (a = guide_scale, ptb = the attack ε in pixel units).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ... import ops
from ...ops import GUIDANCE_TARGET
from .terms import mse, ssim


@dataclass(frozen=True)
class GDMPConfig:
    distance: str = "ssim"               # 'mse' | 'ssim'
    guide_scale: float = 70000.0         # a (CIFAR-10 SSIM default; MSE config: 60000)
    ptb: float = 8.0                     # attack ε in pixel units (of 255)
    target: str = "diffused"             # 'diffused' (fresh z′ per step, CIFAR) | 'input' (ImageNet)
    reduction: str = "global_mean"       # GDMP-compatible (scale falls with batch size); 'per_sample_mean' is batch-invariant
    guidance_grad: str = "exact"         # attack side: 'exact' | 'detach'

    def as_dict(self) -> dict:
        return asdict(self)

    def scale_at(self, abar: float) -> float:
        m = (2.0 * self.ptb / 255.0) / 3.0 / self.guide_scale
        return math.sqrt(1.0 - abar) / (m * math.sqrt(abar))


class GDMPGuidance:
    kind = "gdmp"

    def __init__(self, config: GDMPConfig | None = None):
        self.cfg = config or GDMPConfig()
        if self.cfg.distance not in ("mse", "ssim") or self.cfg.target not in ("diffused", "input"):
            raise ValueError(f"bad GDMP config {self.cfg}")

    def bind(self, x_in: torch.Tensor, model, seeds: torch.Tensor, round: int = 0, *, backend: str | None = None):
        """The per-step hook guidance(u, eps, i).  backend: the purifier's op backend (None: automatic, or
        FASTPURIFY_BACKEND), so the target noise z′ is drawn where the purifier's own noise is."""
        cfg, sched = self.cfg, model.schedule
        exact = cfg.guidance_grad == "exact"
        u_in = 2.0 * x_in - 1.0
        if not exact:
            u_in = u_in.detach()

        def guidance(u: torch.Tensor, eps: torch.Tensor, i: int):
            if cfg.guide_scale == 0.0:
                return None
            abar = sched.abar(i)
            target = u_in
            if cfg.target == "diffused":
                z = ops.normal(seeds, tuple(u.shape), step=i, purpose=GUIDANCE_TARGET, round=round,
                               backend=backend).to(u)
                target = math.sqrt(abar) * u_in + math.sqrt(1 - abar) * z
            outer = torch.is_grad_enabled() and exact and u.requires_grad
            with torch.enable_grad():
                uu = u if outer else u.detach().requires_grad_(True)
                tgt = target if outer else target.detach()
                D = -mse(uu, tgt, cfg.reduction) if cfg.distance == "mse" else ssim(uu, tgt, reduction=cfg.reduction)
                (g,) = torch.autograd.grad(D.sum(), uu, create_graph=outer)
            return cfg.scale_at(abar) * g

        return guidance
