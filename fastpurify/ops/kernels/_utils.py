"""Shared Triton pieces: the Philox normal (spec: fastpurify/ops/reference/philox.py), launch configs, device guard."""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl

from .._ext import triton_interpret


# (BLOCK, num_warps), the usual best first: FASTPURIFY_AUTOTUNE=n keeps the first n.
ELEMENTWISE_SPACE = ((1024, 4), (2048, 8), (512, 4), (4096, 8))


def elementwise_configs() -> list[triton.Config]:
    """Autotune space for the memory-bound kernels.  The interpreter cannot autotune between several configs
    (and has nothing to measure), so it gets exactly one.  FASTPURIFY_AUTOTUNE=n (read when fastpurify is imported)
    keeps the first n of ELEMENTWISE_SPACE: the GPU test lane sets 1, so each kernel compiles once per
    specialisation instead of once per config and nothing is benchmarked (results do not depend on the config)."""
    if triton_interpret():
        return [triton.Config({"BLOCK": 1024}, num_warps=4)]
    n = os.environ.get("FASTPURIFY_AUTOTUNE", "").strip()
    if n and (not n.isdigit() or int(n) < 1):
        raise ValueError(f"FASTPURIFY_AUTOTUNE must be a number of configs ≥ 1, got {n!r}")
    space = ELEMENTWISE_SPACE[:int(n)] if n else ELEMENTWISE_SPACE
    return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in space]


def on_device(x: torch.Tensor):
    """Launch on x's GPU (Triton launches on the current device); nothing to do for CPU tensors (interpreter)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


@triton.jit
def philox_words(seed, elem, step, purpose, round):
    """The first two Philox4x32-10 words (r0, r1), uint32 blocks, for the elements `elem` (uint32 block) of the
    stream of the int64 scalar `seed`: counter (elem, step, purpose, round), the rest uint32 scalars."""
    k0 = (seed & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c0 = elem
    c1 = tl.zeros_like(elem) + step
    c2 = tl.zeros_like(elem) + purpose
    c3 = tl.zeros_like(elem) + round
    for _ in tl.static_range(10):
        a0 = c0
        a2 = c2
        c0 = tl.umulhi(a2, 0xCD9E8D57) ^ c1 ^ k0
        c2 = tl.umulhi(a0, 0xD2511F53) ^ c3 ^ k1
        c1 = a2 * 0xCD9E8D57
        c3 = a0 * 0xD2511F53
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1


@triton.jit
def philox_normal(seed, elem, step, purpose, round):
    """ξ for the elements `elem` of the stream of `seed` (arguments as philox_words): Box–Muller on the 24-bit
    uniforms of the words r0, r1, in float32."""
    c0, c1 = philox_words(seed, elem, step, purpose, round)
    u1 = ((c0 >> 8) + 1).to(tl.float32) * (1.0 / 16777216.0)
    u2 = (c1 >> 8).to(tl.float32) * (1.0 / 16777216.0)
    # tl.log/tl.cos lower to libdevice's precise __nv_logf/__nv_cosf; tl.sqrt would be the approximate sqrt.
    return tl.sqrt_rn(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)
