"""One reverse-diffusion step with in-op noise and fused guidance — the spec of `fastpurify.ops.sampler_step` and
`fastpurify.ops.guidance_accumulate`.

Every sampler family is one row of a coefficient table, c = coef[k] = [q0, q1, p0, p1, p2, σ, s_g]:

    x̂0  = q0·x − q1·ε̂                      (clamped to [−1, 1] when clip)
    G   = Σ_j gw[j, b]·g[j, b]              (fused guidance accumulation; 0 without g)
    out = p0·x̂0 + p1·x + p2·ε̂ + σ·ξ(seeds[b], k, purpose, round, element) + s_g·G

    DDPM      q0 = 1/√ᾱ_i, q1 = √(1−ᾱ_i)/√ᾱ_i, p0 = c1, p1 = c2, p2 = 0, σ = σ_i (0 at i = 0), s_g = σ_i²
    DDIM(η)   q0, q1 as DDPM, p0 = √ᾱ_j, p1 = 0, p2 = c2, σ = c1 (the η term), s_g = 0
    VP-SDE EM q0 = q1 = p0 = 0, p1 = 1 + ½βh, p2 = −hβ/σ(s), σ = √(βh), s_g = hβ

Shapes: x, ε̂: (B, ...);  g: (K, B, ...);  gw: (K, B);  coef: (S, 7);  k: 0-dim int64 — both the row of `coef` and
the Philox step word, so a captured graph replays a step by advancing one device scalar.  seeds: (B,) int64.
The reference computes in x's dtype (so a float16 run of it is "torch in float16", the bar for low-precision kernels).
"""

from __future__ import annotations

import torch

from .philox import normal_ref

N_COEF = 7  # q0, q1, p0, p1, p2, sigma, s_g


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(…, B) → (…, B, 1, …, 1) broadcasting over the trailing dims of `like` (B, ...)."""
    return v.reshape(v.shape + (1,) * (like.dim() - 1))


def sampler_step_ref(x: torch.Tensor, eps: torch.Tensor, g: torch.Tensor | None, gw: torch.Tensor | None,
                     coef: torch.Tensor, k: torch.Tensor, seeds: torch.Tensor, clip: bool, purpose: int,
                     round: int = 0) -> torch.Tensor:
    q0, q1, p0, p1, p2, sigma, s_g = coef[k].to(x.dtype).unbind()
    x0 = q0 * x - q1 * eps
    if clip:  # a Python bool fixed by the sampler, never a tensor test
        x0 = x0.clamp(-1.0, 1.0)
    out = p0 * x0 + p1 * x + p2 * eps
    out = out + sigma * normal_ref(seeds, tuple(x.shape), k, purpose, round).to(x.dtype)
    if g is not None:
        out = out + s_g * guidance_accumulate_ref(g, gw)
    return out


def sampler_step_bwd_ref(grad: torch.Tensor, x: torch.Tensor | None, eps: torch.Tensor | None,
                         gw: torch.Tensor | None, coef: torch.Tensor, k: torch.Tensor, clip: bool, need_g: bool):
    """(∂L/∂x, ∂L/∂ε̂, ∂L/∂g or None).  With m = 1[−1 < x̂0 < 1] (torch's clamp gradient; m = 1 without clip):
        ∂out/∂x = p1 + p0·q0·m,   ∂out/∂ε̂ = p2 − p0·q1·m,   ∂out/∂g[j, b] = s_g·gw[j, b].
    The noise enters additively, so it is never regenerated here.  x, ε̂ are only read when clip."""
    q0, q1, p0, p1, p2, _, s_g = coef[k].to(grad.dtype).unbind()
    if clip:
        x0 = q0 * x - q1 * eps
        m = ((x0 > -1.0) & (x0 < 1.0)).to(grad.dtype)
        gx, geps = grad * (p1 + p0 * q0 * m), grad * (p2 - p0 * q1 * m)
    else:
        gx, geps = grad * (p1 + p0 * q0), grad * (p2 - p0 * q1)
    gg = guidance_accumulate_bwd_ref(grad, gw) * s_g if need_g else None
    return gx, geps, gg


def guidance_accumulate_ref(g: torch.Tensor, gw: torch.Tensor) -> torch.Tensor:
    """G[b] = Σ_j gw[j, b]·g[j, b].   g: (K, B, ...);  gw: (K, B) → (B, ...) in g's dtype."""
    return (_per_sample(gw.to(g.dtype), g[0]) * g).sum(0)


def guidance_accumulate_bwd_ref(grad: torch.Tensor, gw: torch.Tensor) -> torch.Tensor:
    """∂L/∂g[j, b] = gw[j, b]·∂L/∂G[b]  → (K, B, ...).  (∂L/∂gw is a dot product, taken in ops.py.)"""
    return _per_sample(gw.to(grad.dtype), grad) * grad.unsqueeze(0)


def guidance_weights_ref(g: torch.Tensor, w: torch.Tensor, max_norm: float | None) -> torch.Tensor:
    """gw[j, b] = w[j]·min(1, max_norm/‖g[j, b]‖): per-term weights with per-sample norm clipping (None: no clip)."""
    gw = w.to(torch.float32 if g.dtype != torch.float64 else g.dtype)[:, None].expand(g.shape[0], g.shape[1])
    if max_norm is None:
        return gw
    norms = torch.linalg.vector_norm(g.flatten(2).to(gw.dtype), dim=2)
    return gw * (max_norm / norms.clamp_min(1e-30)).clamp(max=1.0)
