// CUDA noise: the Philox normals alone (ops.normal) and their raw words (ops.philox_bits).
// Spec: fastpurify/ops/reference/philox.py; the words are bit-identical to it, Box–Muller uses the precise
// logf/cosf/sqrtf (no --use_fast_math), about an ulp from torch's.
#include "../philox.h"
#include "common.cuh"

namespace fastpurify {
namespace cuda {
namespace {

// out[b, e] = ξ(seeds[b], step, purpose, round, e):  out (B, n) float32.
template <bool VEC>
__global__ void normal_kernel(const int64_t* __restrict__ seeds, float* __restrict__ out, int64_t B, int64_t n,
                              uint32_t step, uint32_t purpose, uint32_t round) {
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (e >= n) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const uint64_t seed = static_cast<uint64_t>(seeds[b]);
    float v[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      v[j] = e + j < n ? philox_normal(seed, static_cast<uint32_t>(e + j), step, purpose, round) : 0.0f;
    store<float, VEC>(out + b * n, e, n, v);
  }
}

// out[0, b, e], out[1, b, e] = the first two Philox words of that draw, as int64:  out (2, B, n).
__global__ void philox_bits_kernel(const int64_t* __restrict__ seeds, int64_t* __restrict__ out, int64_t B, int64_t n,
                                   uint32_t step, uint32_t purpose, uint32_t round) {
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (e >= n) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    const uint64_t seed = static_cast<uint64_t>(seeds[b]);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      if (e + j >= n) break;
      const Philox4 r = philox4x32_10(static_cast<uint32_t>(e + j), step, purpose, round,
                                      static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
      out[b * n + e + j] = r.v[0];
      out[(B + b) * n + e + j] = r.v[1];
    }
  }
}

}  // namespace

cudaError_t normal_fwd(const int64_t* seeds, float* out, int64_t B, int64_t n, uint32_t step, uint32_t purpose,
                       uint32_t round, cudaStream_t stream) {
  if (B == 0 || n == 0) return cudaSuccess;
  return with_bool(vectorisable<float>(n, {out}), [&](auto vec) {
    normal_kernel<decltype(vec)::value><<<grid_for(B, n), kThreads, 0, stream>>>(seeds, out, B, n, step, purpose,
                                                                                 round);
    return cudaGetLastError();
  });
}

cudaError_t philox_bits_fwd(const int64_t* seeds, int64_t* out, int64_t B, int64_t n, uint32_t step, uint32_t purpose,
                            uint32_t round, cudaStream_t stream) {
  if (B == 0 || n == 0) return cudaSuccess;
  philox_bits_kernel<<<grid_for(B, n), kThreads, 0, stream>>>(seeds, out, B, n, step, purpose, round);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastpurify
