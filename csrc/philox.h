// Philox4x32-10 and Box–Muller, shared by the C++ CPU and CUDA kernels.
// Spec: fastpurify/ops/reference/philox.py — the streams are bit-identical to it (tests compare the raw words).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FP_HD __host__ __device__ __forceinline__
#else
#define FP_HD inline
#endif

namespace fastpurify {

struct Philox4 {
  uint32_t v[4];
};

FP_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// counter = (element, step, purpose, round), key = the 64-bit sample seed.
FP_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
    mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    k0 += 0x9E3779B9u; k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Box–Muller on the two 24-bit uniforms of Philox words (r0, r1), float32 arithmetic (matches bits_to_normal).
FP_HD float box_muller(uint32_t r0, uint32_t r1) {
  const float inv24 = 1.0f / 16777216.0f;
  const float u1 = static_cast<float>((r0 >> 8) + 1u) * inv24;
  const float u2 = static_cast<float>(r1 >> 8) * inv24;
  const float two_pi = 6.28318530717958647692f;
#if defined(__CUDA_ARCH__)
  return sqrtf(-2.0f * logf(u1)) * cosf(two_pi * u2);
#else
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(two_pi * u2);
#endif
}

// ξ for one element of the stream of `seed`: counter (elem, step, purpose, round).
FP_HD float philox_normal(uint64_t seed, uint32_t elem, uint32_t step, uint32_t purpose, uint32_t round) {
  const Philox4 r = philox4x32_10(elem, step, purpose, round, static_cast<uint32_t>(seed),
                                  static_cast<uint32_t>(seed >> 32));
  return box_muller(r.v[0], r.v[1]);
}

}  // namespace fastpurify
