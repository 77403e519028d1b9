// Standalone checks of the C++ noise kernels (csrc/cpu/noise.cpp), run by ctest (CMakeLists.txt):
//   1. Philox4x32-10 known-answer vectors (Random123) on every instruction set this CPU runs;
//   2. every instruction set gives the baseline's words and normals bit for bit, on lengths that exercise the tails;
//   3. Box–Muller against a double-precision evaluation of the same formula on the same float32 angle:
//      every one of the 2²⁴ values of u1 (all radii) and of u2 (all angles), and 2²² random word pairs.
// Exit status 0 when every check passes; each failure prints what differed.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "../../csrc/cpu/noise.h"
#include "expect.h"

using fastpurify::Isa;

namespace {

std::vector<Isa> isas() {
  std::vector<Isa> out;
  for (Isa i : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512})
    if (fastpurify::isa_supported(i)) out.push_back(i);
  return out;
}

// Random123's known answers for Philox4x32-10: counter (c0..c3), key (k0, k1) → first two words.  The counter's
// first word is the element index, so each vector is placed at position 37 of a 100-element run (vector body + tail).
void test_known_answers() {
  struct Kat {
    uint32_t c[4], k[2], r[2];
  };
  const uint32_t M = 0xFFFFFFFFu;
  const Kat kats[] = {{{0, 0, 0, 0}, {0, 0}, {0x6627E8D5u, 0xE169C58Du}},
                      {{M, M, M, M}, {M, M}, {0x408F276Du, 0x41C83B0Eu}},
                      {{0x243F6A88u, 0x85A308D3u, 0x13198A2Eu, 0x03707344u}, {0xA4093822u, 0x299F31D0u},
                       {0xD16CFE09u, 0x94FDCCEBu}}};
  for (Isa isa : isas())
    for (const Kat& t : kats) {
      const int64_t at = t.c[0] >= 37 ? 37 : 0;
      uint32_t r0[100], r1[100];
      const uint64_t seed = t.k[0] | (uint64_t(t.k[1]) << 32);
      const int64_t len = int64_t(t.c[0]) - at + 100 > (int64_t(1) << 32) ? at + 1 : 100;  // counters < 2³²
      fastpurify::philox_words(isa, r0, r1, seed, int64_t(t.c[0]) - at, len, t.c[1], t.c[2], t.c[3]);
      EXPECT(r0[at] == t.r[0] && r1[at] == t.r[1], "%s: Philox KAT ctr %08x: got %08x %08x, want %08x %08x",
            fastpurify::isa_name(isa), t.c[0], r0[at], r1[at], t.r[0], t.r[1]);
    }
}

// Every instruction set against the baseline, bit for bit (words and normals), with odd lengths and offsets.
void test_paths_agree() {
  const int64_t lens[] = {1, 7, 31, 32, 33, 100, 255, 257, 2053};
  for (Isa isa : isas())
    for (int64_t len : lens)
      for (int64_t e0 : {int64_t(0), int64_t(5), int64_t(4294967295LL) - len}) {
        std::vector<uint32_t> a0(len), a1(len), b0(len), b1(len);
        std::vector<float> za(len), zb(len);
        const uint64_t seed = 0xC0FFEE1234567ULL ^ uint64_t(len);
        fastpurify::philox_words(Isa::kBaseline, a0.data(), a1.data(), seed, e0, len, 11, 1, 3);
        fastpurify::philox_words(isa, b0.data(), b1.data(), seed, e0, len, 11, 1, 3);
        fastpurify::box_muller(Isa::kBaseline, a0.data(), a1.data(), za.data(), len);
        fastpurify::box_muller(isa, b0.data(), b1.data(), zb.data(), len);
        int64_t bad = 0;
        for (int64_t j = 0; j < len; ++j)
          bad += a0[j] != b0[j] || a1[j] != b1[j] || std::memcmp(&za[j], &zb[j], sizeof(float)) != 0;
        EXPECT(bad == 0, "%s: %lld of %lld elements differ from baseline (e0 %lld)", fastpurify::isa_name(isa),
              (long long)bad, (long long)len, (long long)e0);
      }
}

// The error of z = sqrt(−2 ln u1)·cos(a), a = fl32(2π·u2), against the same formula in double on the same a, in
// units of 2⁻²³·max(1, R) with R = sqrt(−2 ln u1) (the ulp of the radius): the reference's own float32 steps cost
// about one such unit, so the bound kMaxUnits keeps the C++ normals within a few ulps of it.
constexpr double kMaxUnits = 2.0;

double units(uint32_t r0, uint32_t r1, float z) {
  const double u1 = double((r0 >> 8) + 1u) / 16777216.0;
  const float a = 6.28318530717958647692f * (float(r1 >> 8) * (1.0f / 16777216.0f));
  const double R = std::sqrt(-2.0 * std::log(u1));
  return std::fabs(double(z) - R * std::cos(double(a))) / (std::ldexp(1.0, -23) * (R > 1.0 ? R : 1.0));
}

void test_box_muller_accuracy() {
  const int64_t n = int64_t(1) << 24;
  std::vector<uint32_t> r0(n), r1(n);
  std::vector<float> z(n);
  for (Isa isa : isas()) {
    double worst[3] = {0, 0, 0};
    for (int pass = 0; pass < 3; ++pass) {
      uint64_t state = 0x9E3779B97F4A7C15ULL;
      for (int64_t k = 0; k < n; ++k) {
        if (pass == 0) {  // every u1 (radius), angle 0
          r0[k] = uint32_t(k) << 8;
          r1[k] = 0;
        } else if (pass == 1) {  // every u2 (angle), radius ≈ 2.35
          r0[k] = 0x10000000u;
          r1[k] = uint32_t(k) << 8;
        } else {  // random pairs (splitmix64)
          state += 0x9E3779B97F4A7C15ULL;
          uint64_t x = (state ^ (state >> 30)) * 0xBF58476D1CE4E5B9ULL;
          x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
          x ^= x >> 31;
          r0[k] = uint32_t(x);
          r1[k] = uint32_t(x >> 32);
        }
      }
      const int64_t m = pass == 2 ? n / 4 : n;
      fastpurify::box_muller(isa, r0.data(), r1.data(), z.data(), m);
      for (int64_t k = 0; k < m; ++k) {
        const double u = units(r0[k], r1[k], z[k]);
        if (!(u <= worst[pass])) worst[pass] = u;  // NaN sticks
      }
    }
    std::printf("%-8s Box-Muller max error (units of 2^-23*max(1,R)): all u1 %.3f, all u2 %.3f, random %.3f\n",
                fastpurify::isa_name(isa), worst[0], worst[1], worst[2]);
    for (double w : worst) EXPECT(w <= kMaxUnits, "%s: Box-Muller error %.3f > %.1f units", fastpurify::isa_name(isa), w,
                                 kMaxUnits);
  }
}

// FASTPURIFY_CPU_ISA caps the instruction set; an unknown name is an error, never silently ignored.
void test_isa_cap() {
  EXPECT(fastpurify::cap_isa(Isa::kAvx512, nullptr) == Isa::kAvx512, "no cap");
  EXPECT(fastpurify::cap_isa(Isa::kAvx512, "") == Isa::kAvx512, "empty cap");
  EXPECT(fastpurify::cap_isa(Isa::kAvx512, "avx2") == Isa::kAvx2, "cap avx2");
  EXPECT(fastpurify::cap_isa(Isa::kAvx2, "avx512") == Isa::kAvx2, "cap above what the CPU runs");
  EXPECT(fastpurify::cap_isa(Isa::kAvx512, "baseline") == Isa::kBaseline, "cap baseline");
  bool threw = false;
  try {
    fastpurify::cap_isa(Isa::kAvx512, "sse9");
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  EXPECT(threw, "unknown FASTPURIFY_CPU_ISA must throw");
}

}  // namespace

int main() {
  std::printf("noise instruction set picked here: %s\n", fastpurify::isa_name(fastpurify::cpu_isa()));
  test_isa_cap();
  test_known_answers();
  test_paths_agree();
  test_box_muller_accuracy();
  return fastpurify_test::finish();
}
