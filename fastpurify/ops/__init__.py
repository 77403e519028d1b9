"""Fused ops: one public function each; it picks a backend (registry.py, backends.py) and runs one autograd.Function.

forward_diffuse(x0, a, s, t, seeds)      x_t = a[t]·x0 + s[t]·ξ(seeds, step, purpose, round)
sampler_step(x, eps, coef, k, seeds, g)  one reverse step of any sampler family, noise and guidance fused
guidance_accumulate(g, gw)               G[b] = Σ_j gw[j, b]·g[j, b]
guidance_weights(g, w, max_norm)         gw[j, b] = w[j]·min(1, max_norm/‖g[j, b]‖)  (a reduction; plain torch)
normal(seeds, shape)                     ξ for each sample's own Philox stream
philox_bits(seeds, n)                    the raw Philox words behind normal (bit-for-bit checks across backends)
Specs: reference/forward_diffusion.py, reference/sampler_step.py, reference/philox.py.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable

from . import backends  # noqa: F401  (registers every op × backend)
from .registry import select
from . import streams  # noqa: F401  (every purpose and seed salt: ops.streams)
from .reference.philox import derive_seeds  # noqa: F401  (per-sample seeds, for all)
from .streams import FORWARD, GUIDANCE_TARGET, STEP  # noqa: F401
from .reference.sampler_step import N_COEF, guidance_weights_ref


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in, and that of coefficient tables and guidance weights: float64 for float64 inputs,
    else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _describe(x: torch.Tensor, **flags) -> str:
    extra = "".join(f", {k}={v}" for k, v in flags.items())
    return f"x={tuple(x.shape)} {x.dtype} {x.device.type}{extra}"


# ---------------------------------------------------------------------------------------------- forward diffusion
def _check_tables(x0, a, s, t, seeds):
    if x0.dim() < 1 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be (B, ...) with B > 0, got shape {tuple(x0.shape)}")
    B = x0.shape[0]
    if t.shape != (B,) or seeds.shape != (B,):
        raise ValueError(f"t and seeds must have shape ({B},), got {tuple(t.shape)} and {tuple(seeds.shape)}")
    if t.dtype != torch.int64 or seeds.dtype != torch.int64:
        raise TypeError(f"t and seeds must be int64, got {t.dtype} and {seeds.dtype}")
    if a.dtype != torch.float32 or s.dtype != torch.float32 or a.shape != s.shape or a.dim() != 1:
        raise TypeError("tables a and s must be 1-D float32 tensors of the same length")
    for name, v in (("a", a), ("s", s), ("t", t), ("seeds", seeds)):
        if v.device != x0.device:
            raise ValueError(f"{name} is on {v.device} but x0 is on {x0.device}")


class ForwardDiffuseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, a, s, t, seeds, step, purpose, round, impl):
        ctx.save_for_backward(a, t)
        ctx.bwd = impl.fns["bwd"]
        return impl.fns["fwd"](x0.contiguous(), a.contiguous(), s.contiguous(), t.contiguous(), seeds.contiguous(),
                               step, purpose, round)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        a, t = ctx.saved_tensors
        return ctx.bwd(grad_out.contiguous(), a, t), None, None, None, None, None, None, None, None


def forward_diffuse(x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor, t: torch.Tensor, seeds: torch.Tensor, *,
                    step: int = 0, purpose: int = FORWARD, round: int = 0, backend: str | None = None) -> torch.Tensor:
    """x_t[b] = a[t_b]·x0[b] + s[t_b]·ξ(seeds[b], step, purpose, round): forward diffusion with in-op noise.

    x0: (B, ...) float;  a, s: (T,) float32 tables;  t: (B,) int64 per-sample indices;  seeds: (B,) int64.
    Differentiable in x0 (∂x_t/∂x0 = a[t_b]; the noise needs no regeneration).
    """
    _check_tables(x0, a, s, t, seeds)
    impl = select("forward_diffuse", x0.device, x0.dtype, backend, _describe(x0))
    return ForwardDiffuseFunction.apply(x0, a, s, t, seeds, step, purpose, round, impl)


# ---------------------------------------------------------------------------------------------- reverse step
def _guidance_operands(x: torch.Tensor, g, gw):
    """g: None, (B, ...) or (K, B, ...) → (K, B, ...) contiguous;  gw: None → ones (K, B), in acc_dtype."""
    if g is None:
        if gw is not None:
            raise ValueError("gw given without g")
        return None, None
    if g.dtype != x.dtype or g.device != x.device:
        raise TypeError(f"g must match x ({x.dtype} {x.device}), got {g.dtype} {g.device}")
    if g.shape == x.shape:
        g = g.unsqueeze(0)
    elif g.dim() != x.dim() + 1 or g.shape[1:] != x.shape or g.shape[0] == 0:
        raise ValueError(f"g must be (B, ...) or (K, B, ...) with (B, ...) = {tuple(x.shape)}, got {tuple(g.shape)}")
    K, B = g.shape[0], g.shape[1]
    if gw is None:
        gw = torch.ones((K, B), device=x.device, dtype=acc_dtype(x.dtype))
    if gw.shape != (K, B) or not gw.is_floating_point() or gw.device != x.device:
        raise ValueError(f"gw must be a float ({K}, {B}) tensor on {x.device}, got {gw.dtype} {tuple(gw.shape)}")
    return g.contiguous(), gw.to(acc_dtype(x.dtype)).contiguous()


def _check_step(x, eps, coef, k, seeds):
    if x.dim() < 1 or x.shape[0] == 0 or not x.is_floating_point():
        raise ValueError(f"x must be a float (B, ...) tensor with B > 0, got {x.dtype} {tuple(x.shape)}")
    if eps.shape != x.shape or eps.dtype != x.dtype or eps.device != x.device:
        raise ValueError(f"eps must match x {tuple(x.shape)} {x.dtype} {x.device}, "
                         f"got {tuple(eps.shape)} {eps.dtype} {eps.device}")
    if coef.dim() != 2 or coef.shape[1] != N_COEF or coef.dtype != acc_dtype(x.dtype) or coef.device != x.device:
        raise TypeError(f"coef must be an (S, {N_COEF}) {acc_dtype(x.dtype)} table on {x.device}, "
                        f"got {tuple(coef.shape)} {coef.dtype} {coef.device}")
    if coef.requires_grad:
        raise ValueError("coef must not require grad: sampler_step is not differentiable in its coefficient table")
    if not isinstance(k, torch.Tensor) or k.dim() != 0 or k.dtype != torch.int64 or k.device != x.device:
        got = f"{k.dtype} {tuple(k.shape)} {k.device}" if isinstance(k, torch.Tensor) else type(k).__name__
        raise TypeError(f"k must be a 0-dim int64 tensor on {x.device} (e.g. a view into a pre-built arange), "
                        f"got {got}")
    if seeds.shape != (x.shape[0],) or seeds.dtype != torch.int64 or seeds.device != x.device:
        raise ValueError(f"seeds must be int64 ({x.shape[0]},) on {x.device}, got {seeds.dtype} {tuple(seeds.shape)}")


def _dot_per_weight(g: torch.Tensor, grad: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """⟨g[j, b], grad[b]⟩ for every (j, b): a batched dot product (K, B), left to torch's matmul in every backend."""
    return torch.einsum("kbn,bn->kb", g.flatten(2).to(dtype), grad.flatten(1).to(dtype))


class SamplerStepFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, eps, g, gw, coef, k, seeds, clip, purpose, round, impl):
        ctx.clip, ctx.has_g, ctx.bwd = clip, g is not None, impl.fns["bwd"]
        # x, ε̂ are read back only for the clamp mask, g only for ∂L/∂gw: nothing else is stored (noise never is).
        keep_g = g is not None and ctx.needs_input_grad[3]
        ctx.save_for_backward(x if clip else None, eps if clip else None, g if keep_g else None, gw, coef, k)
        return impl.fns["fwd"](x, eps, g, gw, coef, k, seeds, clip, purpose, round)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, eps, g, gw, coef, k = ctx.saved_tensors
        need_g = ctx.has_g and ctx.needs_input_grad[2]
        gx, geps, gg = ctx.bwd(grad.contiguous(), x, eps, gw, coef, k, ctx.clip, need_g)
        ggw = None
        if ctx.has_g and ctx.needs_input_grad[3]:
            ggw = coef[k, 6] * _dot_per_weight(g, grad, gw.dtype)  # ∂L/∂gw[j, b] = s_g·⟨∂L/∂out[b], g[j, b]⟩
        return gx, geps, gg, ggw, None, None, None, None, None, None, None


def sampler_step(x: torch.Tensor, eps: torch.Tensor, coef: torch.Tensor, k: torch.Tensor, seeds: torch.Tensor,
                 g: torch.Tensor | None = None, gw: torch.Tensor | None = None, *, clip: bool, purpose: int = STEP,
                 round: int = 0, backend: str | None = None) -> torch.Tensor:
    """One fused reverse step: out = p0·x̂0 + p1·x + p2·ε̂ + σ·ξ(seeds, k) + s_g·Σ_j gw[j]·g[j],  x̂0 = q0·x − q1·ε̂
    (clamped to [−1, 1] when clip), with [q0, q1, p0, p1, p2, σ, s_g] = coef[k]  (reference/sampler_step.py).

    x, eps: (B, ...);  coef: (S, 7) float32 (float64 for float64 x) on x's device, built once per sampler call;
    k: 0-dim int64 device tensor (the row, and the Philox step word: no host round-trip per step);
    seeds: (B,) int64;  g: optional guidance, (B, ...) or (K, B, ...) terms;  gw: optional (K, B) weights (default 1).
    Differentiable in x, eps, g and gw.
    """
    _check_step(x, eps, coef, k, seeds)
    g, gw = _guidance_operands(x, g, gw)
    impl = select("sampler_step", x.device, x.dtype, backend, _describe(x, clip=clip, guided=g is not None))
    return SamplerStepFunction.apply(x.contiguous(), eps.contiguous(), g, gw, coef.contiguous(), k,
                                     seeds.contiguous(), bool(clip), purpose, round, impl)


# ---------------------------------------------------------------------------------------------- guidance
class GuidanceAccumulateFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, g, gw, impl):
        ctx.bwd = impl.fns["bwd"]
        ctx.save_for_backward(g if ctx.needs_input_grad[1] else None, gw)
        return impl.fns["fwd"](g, gw)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        g, gw = ctx.saved_tensors
        grad = grad.contiguous()
        gg = ctx.bwd(grad, gw) if ctx.needs_input_grad[0] else None
        ggw = _dot_per_weight(g, grad, gw.dtype) if ctx.needs_input_grad[1] else None
        return gg, ggw, None


def guidance_accumulate(g: torch.Tensor, gw: torch.Tensor | None = None, *, backend: str | None = None) -> torch.Tensor:
    """G[b] = Σ_j gw[j, b]·g[j, b] for guidance terms (or EOT replicas) g: (K, B, ...) and weights gw: (K, B).

    Use it where a sampler needs G on its own; `sampler_step(..., g, gw)` fuses the same sum into the step.
    """
    if g.dim() < 2 or g.shape[0] == 0 or g.shape[1] == 0 or not g.is_floating_point():
        raise ValueError(f"g must be a float (K, B, ...) tensor, got {g.dtype} {tuple(g.shape)}")
    g, gw = _guidance_operands(g[0], g, gw)
    impl = select("guidance_accumulate", g.device, g.dtype, backend, _describe(g))
    return GuidanceAccumulateFunction.apply(g, gw, impl)


def guidance_weights(g: torch.Tensor, w, max_norm: float | None = None) -> torch.Tensor:
    """(K, B) weights gw[j, b] = w[j]·min(1, max_norm/‖g[j, b]‖) for g: (K, B, ...): per-term scales with optional
    per-sample norm clipping.  A reduction, so plain torch on every backend; differentiable (torch autograd)."""
    w = torch.as_tensor(w, device=g.device)
    if w.shape != (g.shape[0],):
        raise ValueError(f"w must have one weight per term ({g.shape[0]},), got {tuple(w.shape)}")
    if max_norm is not None and not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    return guidance_weights_ref(g, w, max_norm)


# ---------------------------------------------------------------------------------------------- noise
def _check_draw(seeds: torch.Tensor, B: int | None, n: int) -> None:
    """seeds: (B,) int64 (any B when B is None);  n elements per sample, each with its own uint32 Philox counter."""
    if (not isinstance(seeds, torch.Tensor) or seeds.dim() != 1 or seeds.dtype != torch.int64
            or (B is not None and seeds.shape[0] != B)):
        got = f"{seeds.dtype} {tuple(seeds.shape)}" if isinstance(seeds, torch.Tensor) else type(seeds).__name__
        raise ValueError(f"seeds must be an int64 tensor of shape ({'B' if B is None else B},), got {got}")
    if not 0 <= n < 2 ** 32:
        raise ValueError(f"at most 2^32 - 1 elements per sample (the Philox element word), got {n}")


def normal(seeds: torch.Tensor, shape: tuple[int, ...], *, step: int, purpose: int, round: int = 0,
           backend: str | None = None) -> torch.Tensor:
    """Standard normal float32 noise of `shape` (B, ...), sample b from Philox stream seeds[b] (never stored).
    Every backend draws the same Philox words; Box–Muller's float32 log/cos differ by a few ulps between them."""
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0 or min(shape) < 0:
        raise ValueError(f"shape must be (B, ...) with non-negative sizes, got {shape}")
    _check_draw(seeds, shape[0], math.prod(shape[1:]))
    impl = select("normal", seeds.device, torch.float32, backend, f"seeds={tuple(seeds.shape)} {seeds.device.type}")
    return impl.fns["fwd"](seeds.contiguous(), shape, step, purpose, round)


def philox_bits(seeds: torch.Tensor, n: int, *, step: int, purpose: int, round: int = 0,
                backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two Philox4x32-10 words (r0, r1) of elements 0..n−1 of each sample's stream: two (B, n) int64
    tensors of uint32 values, those behind `normal` (reference/philox.py).  For bit-for-bit checks of a backend."""
    _check_draw(seeds, None, n)
    impl = select("philox_bits", seeds.device, torch.float32, backend,
                  f"seeds={tuple(seeds.shape)} {seeds.device.type}")
    return impl.fns["fwd"](seeds.contiguous(), int(n), step, purpose, round)
