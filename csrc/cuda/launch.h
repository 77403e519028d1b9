// Launchers of fastpurify's CUDA kernels on raw pointers and a stream.  No torch headers on purpose: the .cu files
// then compile in about a second each, and bindings.cpp (host compiler) does the tensor checks and stream lookup.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace fastpurify {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// x_t = a[t_b]·x0 + s[t_b]·ξ(seeds[b], step, purpose, round);  x0, out: (B, n) of dt
cudaError_t forward_diffuse_fwd(DType dt, const void* x0, void* out, const float* a, const float* s, const int64_t* t,
                                const int64_t* seeds, int64_t B, int64_t n, uint32_t step, uint32_t purpose,
                                uint32_t round, cudaStream_t stream);
// ∂L/∂x0 = a[t_b]·∂L/∂x_t
cudaError_t forward_diffuse_bwd(DType dt, const void* grad, void* gx, const float* a, const int64_t* t, int64_t B,
                                int64_t n, cudaStream_t stream);

// One reverse step, row c = coef[*k] (S, 7) = [q0, q1, p0, p1, p2, sigma, s_g] read on the device;
// g: (K, B, n) of dt or nullptr, gw: (K, B) float32.
cudaError_t sampler_step_fwd(DType dt, const void* x, const void* eps, const void* g, const float* gw, int64_t K,
                             const float* coef, const int64_t* k, const int64_t* seeds, void* out, int64_t B,
                             int64_t n, bool clip, uint32_t purpose, uint32_t round, cudaStream_t stream);
// (∂L/∂x, ∂L/∂eps, and ∂L/∂g when gg != nullptr); x and eps are read only when clip.
cudaError_t sampler_step_bwd(DType dt, const void* grad, const void* x, const void* eps, const float* gw, int64_t K,
                             const float* coef, const int64_t* k, void* gx, void* geps, void* gg, int64_t B,
                             int64_t n, bool clip, cudaStream_t stream);

// G[b] = Σ_j gw[j,b]·g[j,b] and ∂L/∂g[j,b] = gw[j,b]·∂L/∂G[b]
cudaError_t guidance_accumulate_fwd(DType dt, const void* g, const float* gw, int64_t K, void* out, int64_t B,
                                    int64_t n, cudaStream_t stream);
cudaError_t guidance_accumulate_bwd(DType dt, const void* grad, const float* gw, int64_t K, void* gg, int64_t B,
                                    int64_t n, cudaStream_t stream);

// out (B, n) float32: ξ(seeds[b], step, purpose, round, e);  philox_bits: out (2, B, n) int64, the words r0, r1
cudaError_t normal_fwd(const int64_t* seeds, float* out, int64_t B, int64_t n, uint32_t step, uint32_t purpose,
                       uint32_t round, cudaStream_t stream);
cudaError_t philox_bits_fwd(const int64_t* seeds, int64_t* out, int64_t B, int64_t n, uint32_t step, uint32_t purpose,
                            uint32_t round, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastpurify
