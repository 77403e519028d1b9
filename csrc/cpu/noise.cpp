// The Philox noise of one tile, shared by every C++ CPU kernel.  No torch headers: this file compiles in a second
// and links into the standalone C++ test (tests/cpp/test_noise.cpp) as it is.
//
// Two passes per chunk, each written once per instruction set (the one of cpu_isa(), isa.h):
//   1. Philox4x32-10 words.  Compilers do not find the fast form of the widening 32×32→64 multiplies, so the AVX2 and
//      AVX-512 paths are intrinsics: every 32-bit word lives in the low half of a 64-bit lane, one vpmuludq per
//      multiply reads only those low halves, and the garbage the xors leave in the high halves is never read.
//   2. Box–Muller in float32, with the log and cos below instead of libm calls: branch-free, so the same plain loop
//      vectorises for every instruction set, and, without FMA contraction (-ffp-contract=off), gives the same bits
//      on every one of them.
#include "noise.h"

#include <bit>
#include <cmath>

#include "../philox.h"

#if FP_X86
#include <immintrin.h>
#endif

namespace fastpurify {
namespace {

constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u, kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
constexpr int64_t kChunk = 256;  // words of one chunk stay in L1 between the two passes

// ---------------------------------------------------------------------------------------------- float32 log and cos
// ln u for u in (0, 1] (normal numbers only; Box–Muller's u1 ≥ 2⁻²⁴).  u = m·2^e with m in [√½, √2), then
// ln u = e·ln 2 + ln(1 + x), x = m − 1 exactly, with a degree-9 minimax polynomial for ln(1 + x) (Cephes logf
// coefficients) and ln 2 split in two so e·ln2_hi is exact.  Measured against double: max 0.83 ulp over all 2²⁴ u1.
[[gnu::always_inline]] inline float log_unit(float u) {
  const uint32_t b = std::bit_cast<uint32_t>(u);
  const int32_t small = (b & 0x007FFFFFu) < 0x003504F3u ? 1 : 0;  // mantissa below √2 / 2 (integer compare)
  const int32_t e = static_cast<int32_t>(b >> 23) - 126 - small;
  const float m = std::bit_cast<float>((b & 0x007FFFFFu) | 0x3F000000u);                 // [0.5, 1)
  const float x = m * std::bit_cast<float>(0x3F800000u + (static_cast<uint32_t>(small) << 23)) - 1.0f;  // ×1 or ×2
  const float z = x * x;
  float p = 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  const float fe = static_cast<float>(e);
  const float y = (p * x * z + fe * -2.12194440e-4f) - 0.5f * z;
  return (x + y) + fe * 0.693359375f;
}

// cos a for a in [0, 2π): reduce to r = a − j·π/4 (j even, |r| ≤ π/4) with π/4 split in three (Cody–Waite; j·DP1
// and j·DP2 are exact), then the sin or cos minimax polynomial of r (Cephes sinf/cosf coefficients) by quadrant.
// Selects are bit masks, not branches, so every instruction set computes the same thing.  Measured against double:
// max 0.65·2⁻²³ absolute over all 2²⁴ Box–Muller angles.
[[gnu::always_inline]] inline float cos_angle(float a) {
  const int32_t j = (static_cast<int32_t>(a * 1.27323954473516f) + 1) & ~1;  // nearest even octant (4/π·a ≥ 0)
  const float y = static_cast<float>(j);
  const float r = ((a - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  const float z = r * r;
  const float c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                  0.5f * z + 1.0f;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const int32_t q = j >> 1;                                                    // quadrant 0..4 (4 ≡ 0)
  const uint32_t odd = 0u - static_cast<uint32_t>(q & 1);                     // quadrants 1, 3: ∓sin r
  const uint32_t neg = static_cast<uint32_t>((q + 1) & 2) << 30;              // quadrants 1, 2: negative
  return std::bit_cast<float>(((std::bit_cast<uint32_t>(s) & odd) | (std::bit_cast<uint32_t>(c) & ~odd)) ^ neg);
}

// ξ = sqrt(−2 ln u1)·cos(2π·u2) in the reference's float32 steps; the 24-bit integers convert exactly via int32.
[[gnu::always_inline]] inline void box_muller_body(const uint32_t* r0, const uint32_t* r1, float* z, int64_t len) {
  const float inv24 = 1.0f / 16777216.0f, two_pi = 6.28318530717958647692f;
  for (int64_t j = 0; j < len; ++j) {
    const float u1 = static_cast<float>(static_cast<int32_t>((r0[j] >> 8) + 1u)) * inv24;
    const float u2 = static_cast<float>(static_cast<int32_t>(r1[j] >> 8)) * inv24;
    z[j] = std::sqrt(-2.0f * log_unit(u1)) * cos_angle(two_pi * u2);
  }
}

void box_muller_baseline(const uint32_t* r0, const uint32_t* r1, float* z, int64_t len) {
  box_muller_body(r0, r1, z, len);
}

// ---------------------------------------------------------------------------------------------- Philox words
void philox_words_baseline(uint32_t* r0, uint32_t* r1, uint64_t seed, int64_t e0, int64_t len, uint32_t step,
                           uint32_t purpose, uint32_t round) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int64_t j = 0; j < len; ++j) {
    const Philox4 r = philox4x32_10(static_cast<uint32_t>(e0 + j), step, purpose, round, k0, k1);
    r0[j] = r.v[0];
    r1[j] = r.v[1];
  }
}

#if FP_X86
// GCC 12's _mm512_undefined_epi32 trips -Wmaybe-uninitialized inside the AVX-512 intrinsics (GCC PR105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// One Philox round on a 64-bit-lane vector (V = __m256i or __m512i): (c0, c1, c2, c3) ← (hi(M1·c2) ⊕ c1 ⊕ k0,
// lo(M1·c2), hi(M0·c0) ⊕ c3 ⊕ k1, lo(M0·c0)), the low 32 bits of each lane being the word.
FP_TARGET("avx2") inline void round_avx2(__m256i& c0, __m256i& c1, __m256i& c2, __m256i& c3, __m256i k0,
                                         __m256i k1) {
  const __m256i p0 = _mm256_mul_epu32(c0, _mm256_set1_epi64x(kM0));
  const __m256i p1 = _mm256_mul_epu32(c2, _mm256_set1_epi64x(kM1));
  c0 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p1, 32), c1), k0);
  c2 = _mm256_xor_si256(_mm256_xor_si256(_mm256_srli_epi64(p0, 32), c3), k1);
  c1 = p1;
  c3 = p0;
}

FP_TARGET("avx512f") inline void round_avx512(__m512i& c0, __m512i& c1, __m512i& c2, __m512i& c3, __m512i k0,
                                              __m512i k1) {
  const __m512i p0 = _mm512_mul_epu32(c0, _mm512_set1_epi64(kM0));
  const __m512i p1 = _mm512_mul_epu32(c2, _mm512_set1_epi64(kM1));
  c0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c1, k0, 0x96);  // 0x96: three-way xor
  c2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c3, k1, 0x96);
  c1 = p1;
  c3 = p0;
}

// kVecs independent vectors per block keep enough multiplies in flight to hide their latency (measured: 2 for AVX2,
// whose 16 registers spill beyond that; 4 for AVX-512's 32).
FP_TARGET("avx2")
void philox_words_avx2(uint32_t* r0, uint32_t* r1, uint64_t seed, int64_t e0, int64_t len, uint32_t step,
                       uint32_t purpose, uint32_t round) {
  constexpr int kVecs = 2, kLanes = 4;
  const __m256i lanes = _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i low_words = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  int64_t j = 0;
  for (; j + kVecs * kLanes <= len; j += kVecs * kLanes) {
    __m256i c0[kVecs], c1[kVecs], c2[kVecs], c3[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      c0[v] = _mm256_add_epi64(_mm256_set1_epi64x(e0 + j + v * kLanes), lanes);
      c1[v] = _mm256_set1_epi64x(step);
      c2[v] = _mm256_set1_epi64x(purpose);
      c3[v] = _mm256_set1_epi64x(round);
    }
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r, k0 += kW0, k1 += kW1) {
      const __m256i K0 = _mm256_set1_epi64x(k0), K1 = _mm256_set1_epi64x(k1);
      for (int v = 0; v < kVecs; ++v) round_avx2(c0[v], c1[v], c2[v], c3[v], K0, K1);
    }
    for (int v = 0; v < kVecs; ++v) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(r0 + j + v * kLanes),
                       _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(c0[v], low_words)));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(r1 + j + v * kLanes),
                       _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(c1[v], low_words)));
    }
  }
  philox_words_baseline(r0 + j, r1 + j, seed, e0 + j, len - j, step, purpose, round);
}

FP_TARGET("avx512f")
void philox_words_avx512(uint32_t* r0, uint32_t* r1, uint64_t seed, int64_t e0, int64_t len, uint32_t step,
                         uint32_t purpose, uint32_t round) {
  constexpr int kVecs = 4, kLanes = 8;
  const __m512i lanes = _mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7);
  int64_t j = 0;
  for (; j + kVecs * kLanes <= len; j += kVecs * kLanes) {
    __m512i c0[kVecs], c1[kVecs], c2[kVecs], c3[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      c0[v] = _mm512_add_epi64(_mm512_set1_epi64(e0 + j + v * kLanes), lanes);
      c1[v] = _mm512_set1_epi64(step);
      c2[v] = _mm512_set1_epi64(purpose);
      c3[v] = _mm512_set1_epi64(round);
    }
    uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r, k0 += kW0, k1 += kW1) {
      const __m512i K0 = _mm512_set1_epi64(k0), K1 = _mm512_set1_epi64(k1);
      for (int v = 0; v < kVecs; ++v) round_avx512(c0[v], c1[v], c2[v], c3[v], K0, K1);
    }
    for (int v = 0; v < kVecs; ++v) {  // vpmovqd: the low 32 bits of each lane
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(r0 + j + v * kLanes), _mm512_cvtepi64_epi32(c0[v]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(r1 + j + v * kLanes), _mm512_cvtepi64_epi32(c1[v]));
    }
  }
  philox_words_baseline(r0 + j, r1 + j, seed, e0 + j, len - j, step, purpose, round);
}

FP_TARGET("avx2") void box_muller_avx2(const uint32_t* r0, const uint32_t* r1, float* z, int64_t len) {
  box_muller_body(r0, r1, z, len);
}

FP_TARGET("avx512f") void box_muller_avx512(const uint32_t* r0, const uint32_t* r1, float* z, int64_t len) {
  box_muller_body(r0, r1, z, len);
}
#pragma GCC diagnostic pop
#endif

}  // namespace

void philox_words(Isa isa, uint32_t* r0, uint32_t* r1, uint64_t seed, int64_t e0, int64_t len, uint32_t step,
                  uint32_t purpose, uint32_t round) {
#if FP_X86
  if (isa == Isa::kAvx512) return philox_words_avx512(r0, r1, seed, e0, len, step, purpose, round);
  if (isa == Isa::kAvx2) return philox_words_avx2(r0, r1, seed, e0, len, step, purpose, round);
#endif
  (void)isa;
  philox_words_baseline(r0, r1, seed, e0, len, step, purpose, round);
}

void box_muller(Isa isa, const uint32_t* r0, const uint32_t* r1, float* z, int64_t len) {
#if FP_X86
  if (isa == Isa::kAvx512) return box_muller_avx512(r0, r1, z, len);
  if (isa == Isa::kAvx2) return box_muller_avx2(r0, r1, z, len);
#endif
  (void)isa;
  box_muller_baseline(r0, r1, z, len);
}

void noise_tile(float* z, uint64_t seed, int64_t e0, int64_t len, uint32_t step, uint32_t purpose, uint32_t round) {
  const Isa isa = cpu_isa();
  uint32_t r0[kChunk], r1[kChunk];
  for (int64_t c = 0; c < len; c += kChunk) {
    const int64_t n = len - c < kChunk ? len - c : kChunk;
    philox_words(isa, r0, r1, seed, e0 + c, n, step, purpose, round);
    box_muller(isa, r0, r1, z + c, n);
  }
}

}  // namespace fastpurify
