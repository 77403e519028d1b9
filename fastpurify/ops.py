"""Fused ops: one public function each; it picks a backend (_registry.py) and runs one autograd.Function.

forward_diffuse(x0, a, s, t, seeds)  x_t = a[t]·x0 + s[t]·ξ(seeds, step, purpose, round)   (reference/forward_diffusion.py)
normal(seeds, shape)                 ξ for each sample's own Philox stream                 (reference/philox.py)
"""

from __future__ import annotations

import torch

from . import _ext
from ._registry import Backend, register, select
from .reference.forward_diffusion import forward_diffuse_bwd_ref, forward_diffuse_ref
from .reference.philox import FORWARD, normal_ref

_FLOATS = (torch.float32, torch.float64)


def _always() -> str | None:
    return None


def _cpp_fwd(x0, a, s, t, seeds, step, purpose, round):
    return torch.ops.fastpurify.forward_diffuse(x0, a, s, t, seeds, step, purpose, round)


def _cpp_normal(seeds, shape, step, purpose, round):
    n = 1
    for d in shape[1:]:
        n *= d
    return torch.ops.fastpurify.normal(seeds, n, step, purpose, round).reshape(shape)


register(Backend("forward_diffuse", "torch", ("cpu", "cuda"), _FLOATS + (torch.float16, torch.bfloat16), _always,
                 {"fwd": forward_diffuse_ref, "bwd": forward_diffuse_bwd_ref}))
register(Backend("forward_diffuse", "cpu", ("cpu",), _FLOATS, _ext.load_error,
                 {"fwd": _cpp_fwd, "bwd": forward_diffuse_bwd_ref}))
register(Backend("normal", "torch", ("cpu", "cuda"), (torch.float32,), _always, {"fwd": normal_ref}))
register(Backend("normal", "cpu", ("cpu",), (torch.float32,), _ext.load_error, {"fwd": _cpp_normal}))


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


class ForwardDiffuseFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x0, a, s, t, seeds, step, purpose, round, impl):
        ctx.save_for_backward(a, t)
        ctx.bwd = impl.fns["bwd"]
        return impl.fns["fwd"](x0, a, s, t, seeds, step, purpose, round)

    @staticmethod
    def backward(ctx, grad_out):
        a, t = ctx.saved_tensors
        return ctx.bwd(grad_out, a, t), None, None, None, None, None, None, None, None


def forward_diffuse(x0: torch.Tensor, a: torch.Tensor, s: torch.Tensor, t: torch.Tensor, seeds: torch.Tensor, *,
                    step: int = 0, purpose: int = FORWARD, round: int = 0, backend: str | None = None) -> torch.Tensor:
    """x_t[b] = a[t_b]·x0[b] + s[t_b]·ξ(seeds[b], step, purpose, round): forward diffusion with in-op noise.

    x0: (B, ...) float;  a, s: (T,) float32 tables;  t: (B,) int64 per-sample indices;  seeds: (B,) int64.
    Differentiable in x0.
    """
    _check_tables(x0, a, s, t, seeds)
    impl = select("forward_diffuse", x0.device, x0.dtype, backend,
                  f"x0={tuple(x0.shape)} {x0.dtype} {x0.device.type}")
    return ForwardDiffuseFunction.apply(x0, a, s, t, seeds, step, purpose, round, impl)


def normal(seeds: torch.Tensor, shape: tuple[int, ...], *, step: int, purpose: int, round: int = 0,
           backend: str | None = None) -> torch.Tensor:
    """Standard normal float32 noise of `shape` (B, ...), sample b from Philox stream seeds[b] (never stored)."""
    if seeds.dim() != 1 or seeds.dtype != torch.int64 or seeds.shape[0] != shape[0]:
        raise ValueError(f"seeds must be int64 of shape ({shape[0]},), got {seeds.dtype} {tuple(seeds.shape)}")
    impl = select("normal", seeds.device, torch.float32, backend, f"seeds={tuple(seeds.shape)} {seeds.device.type}")
    return impl.fns["fwd"](seeds, tuple(shape), step, purpose, round)
