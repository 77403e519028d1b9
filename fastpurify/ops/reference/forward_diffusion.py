"""Forward diffusion with in-op noise — the spec of `fastpurify.ops.forward_diffuse`.

    x_t[b] = a[t_b] · x0[b] + s[t_b] · ξ(seeds[b], step, purpose, round, element)

x0: (B, ...) float;  a, s: (T,) float32 tables (e.g. √ᾱ, √(1−ᾱ));  t: (B,) int64 indices;  seeds: (B,) int64.
The noise ξ is `normal_ref` (Philox, reference/philox.py), so it is never stored: a backward regenerates nothing,
since ∂x_t/∂x0 = a[t_b] does not involve the noise.
"""

from __future__ import annotations

import torch

from .philox import normal_ref


def forward_diffuse_ref(x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor, t: torch.Tensor, seeds: torch.Tensor,
                        step: int = 0, purpose: int = 0, round: int = 0) -> torch.Tensor:
    view = (-1,) + (1,) * (x0.dim() - 1)
    ca = a.to(x0.dtype)[t].reshape(view)
    cs = s.to(x0.dtype)[t].reshape(view)
    noise = normal_ref(seeds, tuple(x0.shape), step, purpose, round).to(x0.dtype)
    return ca * x0 + cs * noise


def forward_diffuse_bwd_ref(grad_out: torch.Tensor, a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """∂L/∂x0 = a[t_b] · ∂L/∂x_t."""
    view = (-1,) + (1,) * (grad_out.dim() - 1)
    return a.to(grad_out.dtype)[t].reshape(view) * grad_out
