// Definitions of the per-tile loops declared in loops.h.  Each loop body is written once, as an always-inline functor,
// and compiled three times by run<Body>: for AVX-512 (target "avx512f"), AVX2 (target "avx2") and the x86-64 baseline;
// the caller's `isa` (cpu_isa(), isa.h) picks the copy.  The loops are element-wise, one rounding per operation in the
// reference's order; FMA contraction is off (-ffp-contract=off, setup.py and CMakeLists.txt; AVX-512F has FMA, AVX2
// as targeted here does not), so every copy gives the same bits (tests/test_cpu_isa.py).
#include "loops.h"

#include <algorithm>

namespace fastpurify {
namespace {

#define FP_INLINE [[gnu::always_inline]] inline

// out = ca·x + cs·z
struct Diffuse {
  template <typename T>
  FP_INLINE void operator()(const T* x, const float* z, T ca, T cs, T* out, int64_t len) const {
    for (int64_t j = 0; j < len; ++j) out[j] = ca * x[j] + cs * static_cast<T>(z[j]);
  }
};

// out = c·in
struct Scale {
  template <typename T>
  FP_INLINE void operator()(const T* in, T c, T* out, int64_t len) const {
    for (int64_t j = 0; j < len; ++j) out[j] = c * in[j];
  }
};

// out += c·in
struct Axpy {
  template <typename T>
  FP_INLINE void operator()(const T* in, T c, T* out, int64_t len) const {
    for (int64_t j = 0; j < len; ++j) out[j] += c * in[j];
  }
};

// out = p0·[clamp](q0·x − q1·ε) + p1·x + p2·ε (+ σ·z)
struct Step {
  template <typename T>
  FP_INLINE void operator()(const T* x, const T* eps, const float* z, const Coefs<T>& c, bool clip, T* out,
                            int64_t len) const {
    if (clip) {
      for (int64_t j = 0; j < len; ++j) {
        const T x0 = std::min(std::max(c.q0 * x[j] - c.q1 * eps[j], T(-1)), T(1));  // NaN propagates, as in torch
        out[j] = c.p0 * x0 + c.p1 * x[j] + c.p2 * eps[j];
      }
    } else {
      for (int64_t j = 0; j < len; ++j) out[j] = c.p0 * (c.q0 * x[j] - c.q1 * eps[j]) + c.p1 * x[j] + c.p2 * eps[j];
    }
    if (z != nullptr)
      for (int64_t j = 0; j < len; ++j) out[j] += c.sigma * static_cast<T>(z[j]);
  }
};

// Backward of Step (its math: fastpurify/ops/reference/sampler_step.py, sampler_step_bwd_ref).
struct StepBwd {
  template <typename T>
  FP_INLINE void operator()(const T* go, const T* x, const T* eps, const Coefs<T>& c, bool clip, T* gx, T* geps,
                            int64_t len) const {
    if (clip) {
      for (int64_t j = 0; j < len; ++j) {
        const T x0 = c.q0 * x[j] - c.q1 * eps[j];
        const T m = (x0 > T(-1) && x0 < T(1)) ? T(1) : T(0);
        gx[j] = go[j] * (c.p1 + c.p0 * c.q0 * m);
        geps[j] = go[j] * (c.p2 - c.p0 * c.q1 * m);
      }
    } else {
      const T dx = c.p1 + c.p0 * c.q0, de = c.p2 - c.p0 * c.q1;
      for (int64_t j = 0; j < len; ++j) {
        gx[j] = go[j] * dx;
        geps[j] = go[j] * de;
      }
    }
  }
};

// Body(args...) compiled for one instruction set each (the always-inline body takes on the target of its caller).
template <typename Body, typename... A>
void run_baseline(A... a) {
  Body{}(a...);
}

#if FP_X86
template <typename Body, typename... A>
FP_TARGET("avx2") void run_avx2(A... a) {
  Body{}(a...);
}

template <typename Body, typename... A>
FP_TARGET("avx512f") void run_avx512(A... a) {
  Body{}(a...);
}
#endif

template <typename Body, typename... A>
void run(Isa isa, A... a) {
#if FP_X86
  if (isa == Isa::kAvx512) return run_avx512<Body>(a...);
  if (isa == Isa::kAvx2) return run_avx2<Body>(a...);
#endif
  (void)isa;
  run_baseline<Body>(a...);
}

}  // namespace

#define FP_DEFINE_LOOPS(T)                                                                                         \
  void diffuse_tile(Isa isa, const T* x, const float* z, T ca, T cs, T* out, int64_t len) {                         \
    run<Diffuse>(isa, x, z, ca, cs, out, len);                                                                     \
  }                                                                                                                 \
  void scale_tile(Isa isa, const T* in, T c, T* out, int64_t len) { run<Scale>(isa, in, c, out, len); }            \
  void axpy_tile(Isa isa, const T* in, T c, T* out, int64_t len) { run<Axpy>(isa, in, c, out, len); }              \
  void step_tile(Isa isa, const T* x, const T* eps, const float* z, const Coefs<T>& c, bool clip, T* out,           \
                 int64_t len) {                                                                                     \
    run<Step>(isa, x, eps, z, c, clip, out, len);                                                                   \
  }                                                                                                                 \
  void step_bwd_tile(Isa isa, const T* go, const T* x, const T* eps, const Coefs<T>& c, bool clip, T* gx, T* geps,  \
                     int64_t len) {                                                                                 \
    run<StepBwd>(isa, go, x, eps, c, clip, gx, geps, len);                                                          \
  }

FP_DEFINE_LOOPS(float)
FP_DEFINE_LOOPS(double)
#undef FP_DEFINE_LOOPS

}  // namespace fastpurify
