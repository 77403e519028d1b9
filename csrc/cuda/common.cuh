// Device helpers shared by the .cu files: dtype conversion to fp32 registers, 4-wide vector loads and stores,
// the launch grid and the compile-time switches.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "launch.h"

namespace fastpurify {
namespace cuda {

constexpr int kVec = 4;         // elements per thread
constexpr int kThreads = 256;   // threads per block
constexpr int64_t kMaxGridY = 65535;

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// kVec consecutive elements in one aligned access: 16 bytes for float, 8 for half/bfloat16.
template <typename T>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

// Elements [e, e + kVec) of p as floats (0 past n).  VEC: n % kVec == 0 and p aligned, so one vector load.
template <typename T, bool VEC>
__device__ __forceinline__ void load(const T* p, int64_t e, int64_t n, float (&out)[kVec]) {
  if constexpr (VEC) {
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p + e);
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] = to_f(pk.v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) out[j] = e + j < n ? to_f(p[e + j]) : 0.0f;
  }
}

template <typename T, bool VEC>
__device__ __forceinline__ void store(T* p, int64_t e, int64_t n, const float (&v)[kVec]) {
  if constexpr (VEC) {
    Pack<T> pk;
#pragma unroll
    for (int j = 0; j < kVec; ++j) pk.v[j] = from_f<T>(v[j]);
    *reinterpret_cast<Pack<T>*>(p + e) = pk;
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j)
      if (e + j < n) p[e + j] = from_f<T>(v[j]);
  }
}

// Grid: x over each sample's elements (kVec per thread), y over samples (a kernel loops when B > 65535).
inline dim3 grid_for(int64_t B, int64_t n) {
  const int64_t per_block = int64_t(kThreads) * kVec;
  return dim3(static_cast<unsigned>((n + per_block - 1) / per_block),
              static_cast<unsigned>(B < kMaxGridY ? B : kMaxGridY));
}

// Vector accesses need n % kVec == 0 (every sample starts aligned) and aligned base pointers.
template <typename T>
inline bool vectorisable(int64_t n, std::initializer_list<const void*> ptrs) {
  if (n % kVec != 0) return false;
  for (const void* p : ptrs)
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % sizeof(Pack<T>) != 0) return false;
  return true;
}

// Runs f(T{}) with T the element type of dt.
template <typename F>
cudaError_t with_dtype(DType dt, const F& f) {
  switch (dt) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// Turns a runtime bool into a compile-time one: f(std::integral_constant<bool, v>{}).
template <typename F>
cudaError_t with_bool(bool v, const F& f) {
  return v ? f(std::true_type{}) : f(std::false_type{});
}

}  // namespace cuda
}  // namespace fastpurify
