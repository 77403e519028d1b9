// The Philox noise of one tile, shared by every C++ CPU kernel.  No torch headers: this file compiles in a second.
#include <cstdint>

#include "../philox.h"
#include "noise.h"
#include "wide.h"

namespace fastpurify {

// The ten Philox rounds are integer-only and vectorise across elements; the widening 32×32→64 multiplies gain most
// from wide registers (measured on an AVX-512 core: 19 → 7 ns per element).
FP_WIDE_CLONES
void noise_tile(float* z, uint64_t seed, int64_t e0, int64_t len, uint32_t step, uint32_t purpose, uint32_t round) {
  uint32_t w0[kTile], w1[kTile];
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  // Integer-only loop first, then Box–Muller through libm (the same float32 steps as the reference).
  for (int64_t j = 0; j < len; ++j) {
    const Philox4 r = philox4x32_10(static_cast<uint32_t>(e0 + j), step, purpose, round, k0, k1);
    w0[j] = r.v[0];
    w1[j] = r.v[1];
  }
  for (int64_t j = 0; j < len; ++j) z[j] = box_muller(w0[j], w1[j]);
}

}  // namespace fastpurify
