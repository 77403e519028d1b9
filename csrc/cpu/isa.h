// The instruction set of every C++ CPU kernel (the Philox noise in noise.cpp, the element-wise loops in loops.cpp):
// one choice for all of them, the widest this CPU runs, capped by FASTPURIFY_CPU_ISA=baseline|avx2|avx512 (tests and
// CI run every path that way; an unknown value throws std::invalid_argument, it is never ignored).  The kernels exist
// once per instruction set, compiled with FP_TARGET; only x86-64 with GCC or Clang has more than the baseline.
// Header-only and without torch headers: noise.cpp links into the standalone C++ test (tests/cpp/test_noise.cpp).
#pragma once
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) && defined(__GNUC__)
#define FP_X86 1
#define FP_TARGET(isa) __attribute__((target(isa)))
#else
#define FP_X86 0
#endif

namespace fastpurify {

enum class Isa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// Whether this CPU (and OS) runs `isa`: the avx2 kernels need AVX2, the avx512 ones AVX-512F.
inline bool isa_supported(Isa isa) {
#if FP_X86
  switch (isa) {
    case Isa::kBaseline: return true;
    case Isa::kAvx2: return __builtin_cpu_supports("avx2");
    case Isa::kAvx512: return __builtin_cpu_supports("avx512f");
  }
  return false;
#else
  return isa == Isa::kBaseline;
#endif
}

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    default: return "baseline";
  }
}

// The narrower of `widest` and the instruction set named by `cap` (nullptr or "": widest); throws on unknown names.
inline Isa cap_isa(Isa widest, const char* cap) {
  if (cap == nullptr || *cap == '\0') return widest;
  for (Isa c : {Isa::kBaseline, Isa::kAvx2, Isa::kAvx512})
    if (std::strcmp(cap, isa_name(c)) == 0) return static_cast<int>(c) < static_cast<int>(widest) ? c : widest;
  throw std::invalid_argument(std::string("FASTPURIFY_CPU_ISA=") + cap + ": expected baseline, avx2 or avx512");
}

// The instruction set of the kernels: read once (thread-safe; retried on the next call if it throws).
inline Isa cpu_isa() {
  static const Isa isa = cap_isa(isa_supported(Isa::kAvx512) ? Isa::kAvx512
                                 : isa_supported(Isa::kAvx2) ? Isa::kAvx2
                                                             : Isa::kBaseline,
                                 std::getenv("FASTPURIFY_CPU_ISA"));
  return isa;
}

}  // namespace fastpurify
