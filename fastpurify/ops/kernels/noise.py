"""Triton noise: the Philox normals alone (ops.normal) and their raw words (ops.philox_bits).
Spec: fastpurify/ops/reference/philox.py.  Grid: (sample b, block of its n elements)."""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._utils import elementwise_configs, on_device, philox_normal, philox_words


@triton.autotune(configs=elementwise_configs(), key=["n"])
@triton.jit(do_not_specialize=["step", "purpose", "round"])
def _normal_fwd_kernel(seeds_ptr, out_ptr, n, step, purpose, round, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    z = philox_normal(tl.load(seeds_ptr + b), offs.to(tl.uint32), step.to(tl.uint32), purpose.to(tl.uint32),
                      round.to(tl.uint32))
    tl.store(out_ptr + b.to(tl.int64) * n + offs, z, mask=offs < n)


# out (2, B, n) int64: out[0, b] = r0, out[1, b] = r1, the words behind _normal_fwd_kernel's draws.
@triton.autotune(configs=elementwise_configs(), key=["n"])
@triton.jit(do_not_specialize=["step", "purpose", "round"])
def _philox_bits_fwd_kernel(seeds_ptr, out_ptr, B, n, step, purpose, round, BLOCK: tl.constexpr):
    b = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    r0, r1 = philox_words(tl.load(seeds_ptr + b), offs.to(tl.uint32), step.to(tl.uint32), purpose.to(tl.uint32),
                          round.to(tl.uint32))
    tl.store(out_ptr + b.to(tl.int64) * n + offs, r0.to(tl.int64), mask=mask)
    tl.store(out_ptr + (B + b).to(tl.int64) * n + offs, r1.to(tl.int64), mask=mask)  # B may be a constexpr 1


def _grid(B: int, n: int):
    return lambda meta: (B, triton.cdiv(n, meta["BLOCK"]))


def normal_fwd(seeds, shape, step, purpose, round):
    """seeds: (B,) int64 contiguous;  shape: (B, ...).  Returns float32 of `shape` on seeds' device."""
    B, n = shape[0], math.prod(shape[1:])
    out = torch.empty((B, n), dtype=torch.float32, device=seeds.device)
    if B and n:
        with on_device(seeds):
            _normal_fwd_kernel[_grid(B, n)](seeds, out, n, step & 0xFFFFFFFF, purpose & 0xFFFFFFFF,
                                            round & 0xFFFFFFFF)
    return out.reshape(shape)


def philox_bits_fwd(seeds, n, step, purpose, round):
    """seeds: (B,) int64 contiguous.  Returns (r0, r1): two (B, n) int64 tensors of uint32 values."""
    B = seeds.shape[0]
    out = torch.empty((2, B, n), dtype=torch.int64, device=seeds.device)
    if B and n:
        with on_device(seeds):
            _philox_bits_fwd_kernel[_grid(B, n)](seeds, out, B, n, step & 0xFFFFFFFF, purpose & 0xFFFFFFFF,
                                                 round & 0xFFFFFFFF)
    return out[0], out[1]
