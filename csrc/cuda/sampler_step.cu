// CUDA fused reverse step and guidance accumulation.  Spec: fastpurify/ops/reference/sampler_step.py.
// Row c = coef[*k] = [q0, q1, p0, p1, p2, sigma, s_g] is read on the device (no host round-trip per step; a captured
// graph replays by advancing *k):
//   x0 = q0·x − q1·ε (clamped to [−1, 1] if CLIP)
//   out = p0·x0 + p1·x + p2·ε + sigma·ξ(seed_b, k) + s_g·Σ_j gw[j,b]·g[j,b]
#include "../philox.h"
#include "common.cuh"

namespace fastpurify {
namespace cuda {
namespace {

struct Row {
  float q0, q1, p0, p1, p2, sigma, sg;
};

__device__ __forceinline__ Row load_row(const float* __restrict__ coef, int64_t k) {
  const float* c = coef + k * 7;
  return Row{c[0], c[1], c[2], c[3], c[4], c[5], c[6]};
}

template <typename T, bool VEC, bool CLIP, bool HAS_G>
__global__ void sampler_step_fwd_kernel(const T* __restrict__ x, const T* __restrict__ eps, const T* __restrict__ g,
                                        const float* __restrict__ gw, int64_t K, const float* __restrict__ coef,
                                        const int64_t* __restrict__ kp, const int64_t* __restrict__ seeds,
                                        T* __restrict__ out, int64_t B, int64_t n, uint32_t purpose, uint32_t round) {
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (e >= n) return;
  const int64_t k = *kp;
  const Row c = load_row(coef, k);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    float xv[kVec], ev[kVec], o[kVec];
    load<T, VEC>(x + b * n, e, n, xv);
    load<T, VEC>(eps + b * n, e, n, ev);
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      float x0 = c.q0 * xv[j] - c.q1 * ev[j];
      if constexpr (CLIP) x0 = fminf(fmaxf(x0, -1.0f), 1.0f);
      o[j] = c.p0 * x0 + c.p1 * xv[j] + c.p2 * ev[j];
    }
    if (c.sigma != 0.0f) {  // uniform over the grid: DDIM η = 0 and last steps skip the RNG
      const uint64_t seed = static_cast<uint64_t>(seeds[b]);
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        o[j] += c.sigma * philox_normal(seed, static_cast<uint32_t>(e + j), static_cast<uint32_t>(k), purpose, round);
    }
    if constexpr (HAS_G) {
      float acc[kVec] = {0.0f, 0.0f, 0.0f, 0.0f};
      for (int64_t j = 0; j < K; ++j) {
        const float w = gw[j * B + b];
        float gv[kVec];
        load<T, VEC>(g + (j * B + b) * n, e, n, gv);
#pragma unroll
        for (int v = 0; v < kVec; ++v) acc[v] += w * gv[v];
      }
#pragma unroll
      for (int v = 0; v < kVec; ++v) o[v] += c.sg * acc[v];
    }
    store<T, VEC>(out + b * n, e, n, o);
  }
}

// Backward.  With m = 1[−1 < x0 < 1] (m = 1 without CLIP; torch's clamp gradient is 0 on the boundary):
//   ∂out/∂x = p1 + p0·q0·m,   ∂out/∂ε = p2 − p0·q1·m,   ∂out/∂g[j,b] = s_g·gw[j,b].
// The noise is additive: no gradient, nothing stored or regenerated.  x and ε are read only for CLIP.
template <typename T, bool VEC, bool CLIP, bool NEED_G>
__global__ void sampler_step_bwd_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                        const T* __restrict__ eps, const float* __restrict__ gw, int64_t K,
                                        const float* __restrict__ coef, const int64_t* __restrict__ kp,
                                        T* __restrict__ gx, T* __restrict__ geps, T* __restrict__ gg, int64_t B,
                                        int64_t n) {
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (e >= n) return;
  const Row c = load_row(coef, *kp);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    float go[kVec], dx[kVec], de[kVec];
    load<T, VEC>(grad + b * n, e, n, go);
    if constexpr (CLIP) {
      float xv[kVec], ev[kVec];
      load<T, VEC>(x + b * n, e, n, xv);
      load<T, VEC>(eps + b * n, e, n, ev);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        const float x0 = c.q0 * xv[j] - c.q1 * ev[j];
        const float m = (x0 > -1.0f && x0 < 1.0f) ? 1.0f : 0.0f;
        dx[j] = go[j] * (c.p1 + c.p0 * c.q0 * m);
        de[j] = go[j] * (c.p2 - c.p0 * c.q1 * m);
      }
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        dx[j] = go[j] * (c.p1 + c.p0 * c.q0);
        de[j] = go[j] * (c.p2 - c.p0 * c.q1);
      }
    }
    store<T, VEC>(gx + b * n, e, n, dx);
    store<T, VEC>(geps + b * n, e, n, de);
    if constexpr (NEED_G) {
      for (int64_t j = 0; j < K; ++j) {
        const float w = gw[j * B + b];
        float v[kVec];
#pragma unroll
        for (int i = 0; i < kVec; ++i) v[i] = (w * go[i]) * c.sg;
        store<T, VEC>(gg + (j * B + b) * n, e, n, v);
      }
    }
  }
}

// G[b] = Σ_j gw[j,b]·g[j,b]
template <typename T, bool VEC>
__global__ void guidance_accumulate_fwd_kernel(const T* __restrict__ g, const float* __restrict__ gw, int64_t K,
                                               T* __restrict__ out, int64_t B, int64_t n) {
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (e >= n) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    float acc[kVec] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int64_t j = 0; j < K; ++j) {
      const float w = gw[j * B + b];
      float gv[kVec];
      load<T, VEC>(g + (j * B + b) * n, e, n, gv);
#pragma unroll
      for (int v = 0; v < kVec; ++v) acc[v] += w * gv[v];
    }
    store<T, VEC>(out + b * n, e, n, acc);
  }
}

// ∂L/∂g[j,b] = gw[j,b]·∂L/∂G[b]
template <typename T, bool VEC>
__global__ void guidance_accumulate_bwd_kernel(const T* __restrict__ grad, const float* __restrict__ gw, int64_t K,
                                               T* __restrict__ gg, int64_t B, int64_t n) {
  const int64_t e = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec;
  if (e >= n) return;
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y) {
    float go[kVec];
    load<T, VEC>(grad + b * n, e, n, go);
    for (int64_t j = 0; j < K; ++j) {
      const float w = gw[j * B + b];
      float v[kVec];
#pragma unroll
      for (int i = 0; i < kVec; ++i) v[i] = w * go[i];
      store<T, VEC>(gg + (j * B + b) * n, e, n, v);
    }
  }
}

}  // namespace

cudaError_t sampler_step_fwd(DType dt, const void* x, const void* eps, const void* g, const float* gw, int64_t K,
                             const float* coef, const int64_t* k, const int64_t* seeds, void* out, int64_t B,
                             int64_t n, bool clip, uint32_t purpose, uint32_t round, cudaStream_t stream) {
  if (B == 0 || n == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return with_bool(vectorisable<T>(n, {x, eps, g, out}), [&](auto vec) {
      return with_bool(clip, [&](auto clip_) {
        return with_bool(g != nullptr, [&](auto has_g) {
          sampler_step_fwd_kernel<T, decltype(vec)::value, decltype(clip_)::value, decltype(has_g)::value>
              <<<grid_for(B, n), kThreads, 0, stream>>>(static_cast<const T*>(x), static_cast<const T*>(eps),
                                                        static_cast<const T*>(g), gw, K, coef, k, seeds,
                                                        static_cast<T*>(out), B, n, purpose, round);
          return cudaGetLastError();
        });
      });
    });
  });
}

cudaError_t sampler_step_bwd(DType dt, const void* grad, const void* x, const void* eps, const float* gw, int64_t K,
                             const float* coef, const int64_t* k, void* gx, void* geps, void* gg, int64_t B,
                             int64_t n, bool clip, cudaStream_t stream) {
  if (B == 0 || n == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return with_bool(vectorisable<T>(n, {grad, x, eps, gx, geps, gg}), [&](auto vec) {
      return with_bool(clip, [&](auto clip_) {
        return with_bool(gg != nullptr, [&](auto need_g) {
          sampler_step_bwd_kernel<T, decltype(vec)::value, decltype(clip_)::value, decltype(need_g)::value>
              <<<grid_for(B, n), kThreads, 0, stream>>>(static_cast<const T*>(grad), static_cast<const T*>(x),
                                                        static_cast<const T*>(eps), gw, K, coef, k,
                                                        static_cast<T*>(gx), static_cast<T*>(geps),
                                                        static_cast<T*>(gg), B, n);
          return cudaGetLastError();
        });
      });
    });
  });
}

cudaError_t guidance_accumulate_fwd(DType dt, const void* g, const float* gw, int64_t K, void* out, int64_t B,
                                    int64_t n, cudaStream_t stream) {
  if (B == 0 || n == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return with_bool(vectorisable<T>(n, {g, out}), [&](auto vec) {
      guidance_accumulate_fwd_kernel<T, decltype(vec)::value><<<grid_for(B, n), kThreads, 0, stream>>>(
          static_cast<const T*>(g), gw, K, static_cast<T*>(out), B, n);
      return cudaGetLastError();
    });
  });
}

cudaError_t guidance_accumulate_bwd(DType dt, const void* grad, const float* gw, int64_t K, void* gg, int64_t B,
                                    int64_t n, cudaStream_t stream) {
  if (B == 0 || n == 0) return cudaSuccess;
  return with_dtype(dt, [&](auto tag) {
    using T = decltype(tag);
    return with_bool(vectorisable<T>(n, {grad, gg}), [&](auto vec) {
      guidance_accumulate_bwd_kernel<T, decltype(vec)::value><<<grid_for(B, n), kThreads, 0, stream>>>(
          static_cast<const T*>(grad), gw, K, static_cast<T*>(gg), B, n);
      return cudaGetLastError();
    });
  });
}

}  // namespace cuda
}  // namespace fastpurify
