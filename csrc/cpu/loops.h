// The per-tile loops of the C++ CPU kernels, as plain functions (float and double) defined in loops.cpp.  They live
// in their own translation unit, without torch headers, and are compiled once per instruction set: memory-bound
// loops gain 2–3× from AVX2/AVX-512 over the SSE2 baseline a portable extension is built for.  Each takes the
// instruction set to run on (the caller passes cpu_isa(), read once per op, outside the parallel region).  Same
// operation order as the reference, no FMA contraction: every instruction set gives the same bits.
#pragma once
#include <cstdint>

#include "isa.h"

namespace fastpurify {

// One row of a sampler coefficient table (fastpurify/ops/reference/sampler_step.py): x0 = q0·x − q1·ε, out = p0·x0 + p1·x + p2·ε + …
template <typename T>
struct Coefs {
  T q0, q1, p0, p1, p2, sigma, sg;
};

#define FP_DECLARE_LOOPS(T)                                                                                          \
  /* out = ca·x + cs·z */                                                                                            \
  void diffuse_tile(Isa isa, const T* x, const float* z, T ca, T cs, T* out, int64_t len);                           \
  /* out = c·in */                                                                                                   \
  void scale_tile(Isa isa, const T* in, T c, T* out, int64_t len);                                                   \
  /* out += c·in */                                                                                                  \
  void axpy_tile(Isa isa, const T* in, T c, T* out, int64_t len);                                                    \
  /* out = p0·[clamp](q0·x − q1·ε) + p1·x + p2·ε (+ σ·z when z != nullptr) */                                        \
  void step_tile(Isa isa, const T* x, const T* eps, const float* z, const Coefs<T>& c, bool clip, T* out,            \
                 int64_t len);                                                                                       \
  /* gx = go·(p1 + p0·q0·m), geps = go·(p2 − p0·q1·m), m = 1[−1 < x0 < 1] when clip (x, eps read only then) */       \
  void step_bwd_tile(Isa isa, const T* go, const T* x, const T* eps, const Coefs<T>& c, bool clip, T* gx, T* geps,   \
                     int64_t len);

FP_DECLARE_LOOPS(float)
FP_DECLARE_LOOPS(double)
#undef FP_DECLARE_LOOPS

}  // namespace fastpurify
