// The Philox noise of one tile (noise.cpp), declared apart from tile.h so noise.cpp needs no torch headers.
// Spec: fastpurify/ops/reference/philox.py.  The words are bit-identical to it on every instruction set; Box–Muller
// uses noise.cpp's own float32 log and cos (max 1 ulp of log, 1 ulp(1) absolute for cos, the same bits on every
// instruction set), where the reference uses torch's (≤ 1 ulp): a normal differs from the reference by a few ulps.
#pragma once
#include <cstdint>

#include "isa.h"

namespace fastpurify {

constexpr int64_t kTile = 2048;  // elements per tile: the unit of parallel work and of the noise buffers

// ξ(seed, step, purpose, round) for elements [e0, e0 + len) of the stream of `seed` into z (len ≤ kTile), on the
// instruction set of cpu_isa() (isa.h).
void noise_tile(float* z, uint64_t seed, int64_t e0, int64_t len, uint32_t step, uint32_t purpose, uint32_t round);

// The two pieces of noise_tile on one instruction set (for the tests that compare every path):
// r0, r1 = the first two Philox4x32-10 words of counters (e0 + j, step, purpose, round), key = seed, j < len;
// z = sqrt(−2 ln u1)·cos(2π u2), u1 = ((r0 >> 8) + 1)·2⁻²⁴, u2 = (r1 >> 8)·2⁻²⁴ (float32 steps of the reference).
void philox_words(Isa isa, uint32_t* r0, uint32_t* r1, uint64_t seed, int64_t e0, int64_t len, uint32_t step,
                  uint32_t purpose, uint32_t round);
void box_muller(Isa isa, const uint32_t* r0, const uint32_t* r1, float* z, int64_t len);

}  // namespace fastpurify
