// CUDA forward diffusion with in-op Philox noise, and its backward.  Spec: fastpurify/ops/reference/forward_diffusion.py.
#include "../philox.h"
#include "common.cuh"

namespace fastpurify {
namespace cuda {
namespace {

// x_t = a[t_b]·x0 + s[t_b]·ξ(seeds[b], step, purpose, round); fp32 registers, stored in T.
template <typename T, bool VEC>
__global__ void forward_diffuse_fwd_kernel(const T* __restrict__ x0, T* __restrict__ out, const float* __restrict__ a,
                                           const float* __restrict__ s, const int64_t* __restrict__ t,
                                           const int64_t* __restrict__ seeds, int64_t B, int64_t n, uint32_t step,
                                           uint32_t purpose, uint32_t round) {
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (e >= n) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const float ca = a[t[b]], cs = s[t[b]];
    const uint64_t seed = static_cast<uint64_t>(seeds[b]);
    float v[kVec];
    load<T, VEC>(x0 + b * n, e, n, v);
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      v[j] = ca * v[j] + cs * philox_normal(seed, static_cast<uint32_t>(e + j), step, purpose, round);
    store<T, VEC>(out + b * n, e, n, v);
  }
}

// ∂L/∂x0 = a[t_b]·∂L/∂x_t: a per-sample scale; the noise term has no gradient, so nothing is regenerated.
template <typename T, bool VEC>
__global__ void forward_diffuse_bwd_kernel(const T* __restrict__ grad, T* __restrict__ gx, const float* __restrict__ a,
                                           const int64_t* __restrict__ t, int64_t B, int64_t n) {
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (e >= n) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const float ca = a[t[b]];
    float v[kVec];
    load<T, VEC>(grad + b * n, e, n, v);
#pragma unroll
    for (int j = 0; j < kVec; ++j) v[j] *= ca;
    store<T, VEC>(gx + b * n, e, n, v);
  }
}

}  // namespace

cudaError_t forward_diffuse_fwd(DType dt, const void* x0, void* out, const float* a, const float* s, const int64_t* t,
                                const int64_t* seeds, int64_t B, int64_t n, uint32_t step, uint32_t purpose,
                                uint32_t round, cudaStream_t stream) {
  if (B == 0 || n == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return with_bool(vectorisable<T>(n, {x0, out}), [&](auto vec) {
      forward_diffuse_fwd_kernel<T, decltype(vec)::value><<<grid_for(B, n), kThreads, 0, stream>>>(
          static_cast<const T*>(x0), static_cast<T*>(out), a, s, t, seeds, B, n, step, purpose, round);
      return cudaGetLastError();
    });
  });
}

cudaError_t forward_diffuse_bwd(DType dt, const void* grad, void* gx, const float* a, const int64_t* t, int64_t B,
                                int64_t n, cudaStream_t stream) {
  if (B == 0 || n == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return with_bool(vectorisable<T>(n, {grad, gx}), [&](auto vec) {
      forward_diffuse_bwd_kernel<T, decltype(vec)::value><<<grid_for(B, n), kThreads, 0, stream>>>(
          static_cast<const T*>(grad), static_cast<T*>(gx), a, t, B, n);
      return cudaGetLastError();
    });
  });
}

}  // namespace cuda
}  // namespace fastpurify
