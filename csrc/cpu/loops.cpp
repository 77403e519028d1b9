// Definitions of the per-tile loops declared in loops.h, each compiled for AVX-512, AVX2 and the baseline.
#include "loops.h"

#include <algorithm>

#include "wide.h"

namespace fastpurify {
namespace {

template <typename T>
inline void diffuse_impl(const T* x, const float* z, T ca, T cs, T* out, int64_t len) {
  for (int64_t j = 0; j < len; ++j) out[j] = ca * x[j] + cs * static_cast<T>(z[j]);
}

template <typename T>
inline void step_impl(const T* x, const T* eps, const float* z, const Coefs<T>& c, bool clip, T* out, int64_t len) {
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

// Backward of step_impl (its math: reference/sampler_step.py, sampler_step_bwd_ref).
template <typename T>
inline void step_bwd_impl(const T* go, const T* x, const T* eps, const Coefs<T>& c, bool clip, T* gx, T* geps,
                          int64_t len) {
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

}  // namespace

#define FP_DEFINE_LOOPS(T)                                                                                        \
  FP_WIDE_CLONES void diffuse_tile(const T* x, const float* z, T ca, T cs, T* out, int64_t len) {                  \
    diffuse_impl(x, z, ca, cs, out, len);                                                                          \
  }                                                                                                                \
  FP_WIDE_CLONES void scale_tile(const T* in, T c, T* out, int64_t len) {                                          \
    for (int64_t j = 0; j < len; ++j) out[j] = c * in[j];                                                          \
  }                                                                                                                \
  FP_WIDE_CLONES void axpy_tile(const T* in, T c, T* out, int64_t len) {                                           \
    for (int64_t j = 0; j < len; ++j) out[j] += c * in[j];                                                         \
  }                                                                                                                \
  FP_WIDE_CLONES void step_tile(const T* x, const T* eps, const float* z, const Coefs<T>& c, bool clip, T* out,    \
                                int64_t len) {                                                                     \
    step_impl(x, eps, z, c, clip, out, len);                                                                       \
  }                                                                                                                \
  FP_WIDE_CLONES void step_bwd_tile(const T* go, const T* x, const T* eps, const Coefs<T>& c, bool clip, T* gx,    \
                                    T* geps, int64_t len) {                                                        \
    step_bwd_impl(go, x, eps, c, clip, gx, geps, len);                                                             \
  }

FP_DEFINE_LOOPS(float)
FP_DEFINE_LOOPS(double)
#undef FP_DEFINE_LOOPS

}  // namespace fastpurify
