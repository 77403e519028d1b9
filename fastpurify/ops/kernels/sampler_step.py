"""Triton fused reverse step and guidance accumulation.  Spec: fastpurify/ops/reference/sampler_step.py.

Row c = coef[k] = [q0, q1, p0, p1, p2, σ, s_g], read on the device from the 0-dim step index k:
    x̂0 = q0·x − q1·ε (clamped to [−1, 1] if CLIP)
    out = p0·x̂0 + p1·x + p2·ε + σ·ξ(seed_b, k) + s_g·Σ_j gw[j,b]·g[j,b]
x, ε: (B, n);  g: (K, B, n);  gw: (K, B) float32;  coef: (S, 7) float32.  Loads in any float dtype, fp32 registers.
Grid: (sample b, block of its n elements).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import elementwise_configs, on_device, philox_normal


@triton.autotune(configs=elementwise_configs(), key=["n", "K"])
@triton.jit(do_not_specialize=["purpose", "round"])
def _sampler_step_fwd_kernel(x_ptr, eps_ptr, g_ptr, gw_ptr, coef_ptr, k_ptr, seeds_ptr, out_ptr, B, n, K, purpose,
                             round, CLIP: tl.constexpr, HAS_G: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    base = b.to(tl.int64) * n
    k = tl.load(k_ptr)
    row = coef_ptr + k * 7
    q0, q1, p0 = tl.load(row), tl.load(row + 1), tl.load(row + 2)
    p1, p2, sigma, sg = tl.load(row + 3), tl.load(row + 4), tl.load(row + 5), tl.load(row + 6)
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    e = tl.load(eps_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    x0 = q0 * x - q1 * e
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -1.0, propagate_nan=tl.PropagateNan.ALL), 1.0,
                        propagate_nan=tl.PropagateNan.ALL)
    out = p0 * x0 + p1 * x + p2 * e
    if sigma != 0.0:  # a uniform branch on a device value: DDIM η = 0 and last steps skip the RNG
        z = philox_normal(tl.load(seeds_ptr + b), offs.to(tl.uint32), (k & 0xFFFFFFFF).to(tl.uint32),
                          purpose.to(tl.uint32), round.to(tl.uint32))
        out = out + sigma * z
    if HAS_G:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for j in range(K):
            w = tl.load(gw_ptr + j * B + b)
            gj = tl.load(g_ptr + (j * B + b).to(tl.int64) * n + offs, mask=mask, other=0.0).to(tl.float32)
            acc += w * gj
        out = out + sg * acc
    tl.store(out_ptr + base + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


# Backward.  With m = 1[−1 < x̂0 < 1] (m = 1 without CLIP; torch's clamp gradient is 0 on the boundary):
#   ∂out/∂x = p1 + p0·q0·m,   ∂out/∂ε = p2 − p0·q1·m,   ∂out/∂g[j,b] = s_g·gw[j,b].
# The noise is additive: it has no gradient and is neither stored nor regenerated.  x, ε are read only for CLIP.
@triton.autotune(configs=elementwise_configs(), key=["n", "K"])
@triton.jit
def _sampler_step_bwd_kernel(go_ptr, x_ptr, eps_ptr, gw_ptr, coef_ptr, k_ptr, gx_ptr, geps_ptr, gg_ptr, B, n, K,
                             CLIP: tl.constexpr, NEED_G: tl.constexpr, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    base = b.to(tl.int64) * n
    row = coef_ptr + tl.load(k_ptr) * 7
    q0, q1, p0 = tl.load(row), tl.load(row + 1), tl.load(row + 2)
    p1, p2, sg = tl.load(row + 3), tl.load(row + 4), tl.load(row + 6)
    go = tl.load(go_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    if CLIP:
        x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        e = tl.load(eps_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        x0 = q0 * x - q1 * e
        m = ((x0 > -1.0) & (x0 < 1.0)).to(tl.float32)
        gx = go * (p1 + p0 * q0 * m)
        ge = go * (p2 - p0 * q1 * m)
    else:
        gx = go * (p1 + p0 * q0)
        ge = go * (p2 - p0 * q1)
    tl.store(gx_ptr + base + offs, gx.to(gx_ptr.dtype.element_ty), mask=mask)
    tl.store(geps_ptr + base + offs, ge.to(geps_ptr.dtype.element_ty), mask=mask)
    if NEED_G:
        for j in range(K):
            w = tl.load(gw_ptr + j * B + b)
            tl.store(gg_ptr + (j * B + b).to(tl.int64) * n + offs, ((w * go) * sg).to(gg_ptr.dtype.element_ty),
                     mask=mask)


# G[b] = Σ_j gw[j,b]·g[j,b]
@triton.autotune(configs=elementwise_configs(), key=["n", "K"])
@triton.jit
def _guidance_accumulate_fwd_kernel(g_ptr, gw_ptr, out_ptr, B, n, K, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(K):
        w = tl.load(gw_ptr + j * B + b)
        acc += w * tl.load(g_ptr + (j * B + b).to(tl.int64) * n + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + b.to(tl.int64) * n + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# ∂L/∂g[j,b] = gw[j,b]·∂L/∂G[b]   (∂L/∂gw is a batched dot product, taken by torch in ops.py)
@triton.autotune(configs=elementwise_configs(), key=["n", "K"])
@triton.jit
def _guidance_accumulate_bwd_kernel(go_ptr, gw_ptr, gg_ptr, B, n, K, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    go = tl.load(go_ptr + b.to(tl.int64) * n + offs, mask=mask, other=0.0).to(tl.float32)
    for j in range(K):
        w = tl.load(gw_ptr + j * B + b)
        tl.store(gg_ptr + (j * B + b).to(tl.int64) * n + offs, (w * go).to(gg_ptr.dtype.element_ty), mask=mask)


def _grid(B: int, n: int):
    return lambda meta: (B, triton.cdiv(n, meta["BLOCK"]))


def _check_fp32_tables(*tables):
    for t in tables:
        if t is not None and t.dtype != torch.float32:
            raise TypeError(f"the Triton kernels read float32 coefficient tables and weights, got {t.dtype}")


def sampler_step_fwd(x, eps, g, gw, coef, k, seeds, clip, purpose, round):
    """x, eps: (B, ...) contiguous;  g: (K, B, ...) or None;  gw: (K, B) float32;  coef: (S, 7) float32;  k: 0-dim."""
    _check_fp32_tables(coef, gw)
    B = x.shape[0]
    n = x.numel() // B
    K = 0 if g is None else g.shape[0]
    out = torch.empty_like(x)
    with on_device(x):
        # Without g the kernel never reads g/gw (HAS_G is a constexpr); x stands in as a valid pointer.
        _sampler_step_fwd_kernel[_grid(B, n)](x, eps, x if g is None else g, coef if gw is None else gw, coef, k,
                                              seeds, out, B, n, K, purpose & 0xFFFFFFFF, round & 0xFFFFFFFF,
                                              CLIP=bool(clip), HAS_G=g is not None)
    return out


def sampler_step_bwd(grad, x, eps, gw, coef, k, clip, need_g):
    _check_fp32_tables(coef, gw)
    B = grad.shape[0]
    n = grad.numel() // B
    K = gw.shape[0] if need_g else 0
    gx, geps = torch.empty_like(grad), torch.empty_like(grad)
    gg = grad.new_empty((K,) + tuple(grad.shape)) if need_g else None
    with on_device(grad):
        _sampler_step_bwd_kernel[_grid(B, n)](grad, x if clip else grad, eps if clip else grad,
                                              gw if need_g else coef, coef, k, gx, geps, gg if need_g else gx,
                                              B, n, K, CLIP=bool(clip), NEED_G=bool(need_g))
    return gx, geps, gg


def guidance_accumulate_fwd(g, gw):
    _check_fp32_tables(gw)
    K, B = g.shape[0], g.shape[1]
    n = g[0].numel() // B
    out = torch.empty_like(g[0])
    with on_device(g):
        _guidance_accumulate_fwd_kernel[_grid(B, n)](g, gw, out, B, n, K)
    return out


def guidance_accumulate_bwd(grad, gw):
    _check_fp32_tables(gw)
    K, B = gw.shape
    n = grad.numel() // B
    gg = grad.new_empty((K,) + tuple(grad.shape))
    with on_device(grad):
        _guidance_accumulate_bwd_kernel[_grid(B, n)](grad, gw, gg, B, n, K)
    return gg
