"""Counter-based noise: Philox4x32-10 (Salmon et al., SC'11) in plain torch — the spec for every backend.

A Gaussian draw is a pure function of (sample seed, step, purpose, round, element index):
    key     = (seed mod 2³², seed >> 32 mod 2³²)          — one 64-bit seed per sample
    counter = (element index, step, purpose, round)
    (r0, r1, _, _) = philox4x32_10(counter, key)
    u1 = ((r0 >> 8) + 1) · 2⁻²⁴ ∈ (0, 1],   u2 = (r1 >> 8) · 2⁻²⁴ ∈ [0, 1)      — exact in float32
    ξ  = sqrt(−2 ln u1) · cos(2π u2)                        — Box–Muller, float32
So results do not depend on batch size, order or backend, and a backward pass can regenerate any noise.
The 32-bit words are carried in int64 tensors; every product is split so nothing overflows.
"""

from __future__ import annotations

import math

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57  # Philox multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
MASK32 = 0xFFFFFFFF
TWO_PI = 2.0 * math.pi
INV_2_24 = 1.0 / 16777216.0

# Purposes (the counter's third word): one independent stream per kind of draw.
FORWARD, STEP, GUIDANCE_TARGET, SEED_DERIVE = 0, 1, 2, 0xFFFF


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product a·m, a an int64 tensor of uint32 values, m a uint32 constant."""
    m_lo, m_hi = m & 0xFFFF, m >> 16
    p_lo = a * m_lo                      # < 2⁴⁸
    p_hi = a * m_hi                      # < 2⁴⁸;  a·m = p_hi·2¹⁶ + p_lo
    lo_full = ((p_hi & 0xFFFF) << 16) + p_lo   # < 2⁴⁹
    lo = lo_full & MASK32
    hi = ((p_hi >> 16) + (lo_full >> 32)) & MASK32
    return hi, lo


def philox4x32(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32 on broadcastable int64 tensors holding uint32 values; returns four int64 tensors."""
    c0, c1, c2, c3, k0, k1 = (torch.as_tensor(v, dtype=torch.int64) for v in (c0, c1, c2, c3, k0, k1))
    for r in range(rounds):
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        if r < rounds - 1:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return c0, c1, c2, c3


def split_seed(seeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 seeds (any sign) → (k0, k1) uint32 words as int64."""
    s = seeds.to(torch.int64)
    return s & MASK32, (s >> 32) & MASK32


def philox_bits(seeds: torch.Tensor, n: int, step: int, purpose: int, round: int = 0):
    """The first two Philox words for elements 0..n−1 of each sample: two (B, n) int64 tensors."""
    k0, k1 = split_seed(seeds)
    idx = torch.arange(n, device=seeds.device, dtype=torch.int64)[None, :]
    r0, r1, _, _ = philox4x32(idx, step & MASK32, purpose & MASK32, round & MASK32, k0[:, None], k1[:, None])
    return r0, r1


def bits_to_normal(r0: torch.Tensor, r1: torch.Tensor) -> torch.Tensor:
    """Box–Muller on 24-bit uniforms, computed in float32."""
    u1 = ((r0 >> 8) + 1).to(torch.float32) * INV_2_24
    u2 = (r1 >> 8).to(torch.float32) * INV_2_24
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(TWO_PI * u2)


def normal_ref(seeds: torch.Tensor, shape: tuple[int, ...], step: int, purpose: int, round: int = 0) -> torch.Tensor:
    """Standard normal noise of `shape` (B, ...) whose sample b is drawn from its own stream seeds[b].

    seeds: (B,) int64.  Returns float32 on seeds.device.
    """
    n = math.prod(shape[1:])
    r0, r1 = philox_bits(seeds, n, step, purpose, round)
    return bits_to_normal(r0, r1).reshape(shape)


def derive_seeds(base: int | torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-sample 63-bit seeds from a base seed (int or (B,) tensor) and integer ids (B,): a Philox hash,
    so nearby bases or ids give unrelated streams.  Used for sample ids, EOT replicas and re-evaluation trials."""
    ids = ids.to(torch.int64)
    if isinstance(base, int):  # a fill kernel, not a host-to-device copy: no sync before a graph replay
        base = torch.full_like(ids, base)
    else:
        base = torch.as_tensor(base, dtype=torch.int64, device=ids.device).expand_as(ids)
    k0, k1 = split_seed(base)
    r0, r1, _, _ = philox4x32(ids & MASK32, (ids >> 32) & MASK32, SEED_DERIVE, 0, k0, k1)
    return ((r1 & 0x7FFFFFFF) << 32) | r0
