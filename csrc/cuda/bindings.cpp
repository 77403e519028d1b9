// Torch side of the CUDA kernels (compiled by the host compiler): input checks, device guard, the current stream
// (so graph capture sees the launches), then the raw-pointer launchers of launch.h.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "launch.h"

namespace fastpurify {
namespace {

cuda::DType dtype_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    default: break;
  }
  TORCH_CHECK(false, "the CUDA kernels take float32, float16 or bfloat16, got ", x.scalar_type());
}

// x: (B, ...) on CUDA, B > 0, contiguous.  Returns (B, n).
std::pair<int64_t, int64_t> check_x(const at::Tensor& x) {
  FP_CHECK_DEVICE(x, at::kCUDA);
  FP_CHECK_CONTIGUOUS(x);
  TORCH_CHECK(x.dim() >= 1 && x.size(0) > 0, "x must be (B, ...) with B > 0");
  dtype_of(x);
  const int64_t B = x.size(0), n = x.numel() / B;
  TORCH_CHECK(n < (int64_t(1) << 32), "at most 2^32 elements per sample");
  return {B, n};
}

void check_on(const at::Tensor& v, const at::Tensor& x, at::ScalarType dt, const char* name) {
  TORCH_CHECK(v.device() == x.device(), name, " must be on ", x.device(), ", got ", v.device());
  TORCH_CHECK(v.scalar_type() == dt, name, " must be ", dt, ", got ", v.scalar_type());
  FP_CHECK_CONTIGUOUS(v);
}

void check_like(const at::Tensor& v, const at::Tensor& x, const char* name) {
  check_on(v, x, x.scalar_type(), name);
  TORCH_CHECK(v.sizes() == x.sizes(), name, " must have shape ", x.sizes(), ", got ", v.sizes());
}

void check_row(const at::Tensor& coef, const at::Tensor& k, const at::Tensor& x) {
  check_on(coef, x, at::kFloat, "coef");
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) == 7, "coef must be (S, 7), got ", coef.sizes());
  check_on(k, x, at::kLong, "k");
  FP_CHECK_DIM(k, 0);  // its value stays on the device: reading it here would cost a sync per step
}

int64_t check_gw(const at::Tensor& gw, const at::Tensor& x, int64_t B) {
  check_on(gw, x, at::kFloat, "gw");
  TORCH_CHECK(gw.dim() == 2 && gw.size(0) > 0 && gw.size(1) == B, "gw must be (K, ", B, "), got ", gw.sizes());
  return gw.size(0);
}

std::vector<int64_t> with_leading(int64_t K, at::IntArrayRef shape) {
  std::vector<int64_t> s{K};
  s.insert(s.end(), shape.begin(), shape.end());
  return s;
}

at::Tensor forward_diffuse_cuda(const at::Tensor& x0, const at::Tensor& a, const at::Tensor& s, const at::Tensor& t,
                                const at::Tensor& seeds, int64_t step, int64_t purpose, int64_t round) {
  const auto [B, n] = check_x(x0);
  check_on(a, x0, at::kFloat, "a");
  check_on(s, x0, at::kFloat, "s");
  TORCH_CHECK(a.dim() == 1 && a.sizes() == s.sizes(), "tables a and s must be 1-D of the same length");
  check_on(t, x0, at::kLong, "t");
  check_on(seeds, x0, at::kLong, "seeds");
  TORCH_CHECK(t.numel() == B && seeds.numel() == B, "t and seeds must have one entry per sample (", B, ")");
  const c10::cuda::CUDAGuard guard(x0.device());
  auto out = at::empty_like(x0);
  C10_CUDA_CHECK(cuda::forward_diffuse_fwd(dtype_of(x0), x0.data_ptr(), out.data_ptr(), a.data_ptr<float>(),
                                           s.data_ptr<float>(), t.data_ptr<int64_t>(), seeds.data_ptr<int64_t>(), B,
                                           n, static_cast<uint32_t>(step), static_cast<uint32_t>(purpose),
                                           static_cast<uint32_t>(round), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor forward_diffuse_bwd_cuda(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& t) {
  const auto [B, n] = check_x(grad);
  check_on(a, grad, at::kFloat, "a");
  check_on(t, grad, at::kLong, "t");
  TORCH_CHECK(t.numel() == B, "t must have one entry per sample (", B, ")");
  const c10::cuda::CUDAGuard guard(grad.device());
  auto gx = at::empty_like(grad);
  C10_CUDA_CHECK(cuda::forward_diffuse_bwd(dtype_of(grad), grad.data_ptr(), gx.data_ptr(), a.data_ptr<float>(),
                                           t.data_ptr<int64_t>(), B, n, c10::cuda::getCurrentCUDAStream()));
  return gx;
}

at::Tensor sampler_step_cuda(const at::Tensor& x, const at::Tensor& eps, const std::optional<at::Tensor>& g,
                             const std::optional<at::Tensor>& gw, const at::Tensor& coef, const at::Tensor& k,
                             const at::Tensor& seeds, bool clip, int64_t purpose, int64_t round) {
  const auto [B, n] = check_x(x);
  check_like(eps, x, "eps");
  check_row(coef, k, x);
  check_on(seeds, x, at::kLong, "seeds");
  TORCH_CHECK(seeds.numel() == B, "seeds must have one entry per sample (", B, ")");
  TORCH_CHECK(g.has_value() == gw.has_value(), "g and gw come together");
  int64_t K = 0;
  if (g.has_value()) {
    K = check_gw(*gw, x, B);
    check_on(*g, x, x.scalar_type(), "g");
    TORCH_CHECK(g->sizes() == at::IntArrayRef(with_leading(K, x.sizes())), "g must be (K, ", x.sizes(), ")");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x);
  C10_CUDA_CHECK(cuda::sampler_step_fwd(dtype_of(x), x.data_ptr(), eps.data_ptr(), K ? g->data_ptr() : nullptr,
                                        K ? gw->data_ptr<float>() : nullptr, K, coef.data_ptr<float>(),
                                        k.data_ptr<int64_t>(), seeds.data_ptr<int64_t>(), out.data_ptr(), B, n, clip,
                                        static_cast<uint32_t>(purpose), static_cast<uint32_t>(round),
                                        c10::cuda::getCurrentCUDAStream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampler_step_bwd_cuda(
    const at::Tensor& grad, const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& eps,
    const std::optional<at::Tensor>& gw, const at::Tensor& coef, const at::Tensor& k, bool clip, bool need_g) {
  const auto [B, n] = check_x(grad);
  check_row(coef, k, grad);
  TORCH_CHECK(!clip || (x.has_value() && eps.has_value()), "clip needs x and eps for the clamp mask");
  if (clip) {
    check_like(*x, grad, "x");
    check_like(*eps, grad, "eps");
  }
  TORCH_CHECK(!need_g || gw.has_value(), "need_g needs gw");
  const int64_t K = need_g ? check_gw(*gw, grad, B) : 0;
  const c10::cuda::CUDAGuard guard(grad.device());
  auto gx = at::empty_like(grad), geps = at::empty_like(grad);
  auto gg = need_g ? at::empty(with_leading(K, grad.sizes()), grad.options()) : at::empty({0}, grad.options());
  C10_CUDA_CHECK(cuda::sampler_step_bwd(dtype_of(grad), grad.data_ptr(), clip ? x->data_ptr() : nullptr,
                                        clip ? eps->data_ptr() : nullptr, need_g ? gw->data_ptr<float>() : nullptr,
                                        K, coef.data_ptr<float>(), k.data_ptr<int64_t>(), gx.data_ptr(),
                                        geps.data_ptr(), need_g ? gg.data_ptr() : nullptr, B, n, clip,
                                        c10::cuda::getCurrentCUDAStream()));
  return {gx, geps, gg};
}

at::Tensor guidance_accumulate_cuda(const at::Tensor& g, const at::Tensor& gw) {
  TORCH_CHECK(g.dim() >= 2 && g.size(0) > 0, "g must be (K, B, ...), got ", g.sizes());
  FP_CHECK_CONTIGUOUS(g);
  const auto like = g.select(0, 0);
  const auto [B, n] = check_x(like);
  const int64_t K = check_gw(gw, like, B);
  TORCH_CHECK(K == g.size(0), "gw must be (K, B) with K = ", g.size(0));
  const c10::cuda::CUDAGuard guard(g.device());
  auto out = at::empty(like.sizes(), g.options());
  C10_CUDA_CHECK(cuda::guidance_accumulate_fwd(dtype_of(g), g.data_ptr(), gw.data_ptr<float>(), K, out.data_ptr(),
                                               B, n, c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor guidance_accumulate_bwd_cuda(const at::Tensor& grad, const at::Tensor& gw) {
  const auto [B, n] = check_x(grad);
  const int64_t K = check_gw(gw, grad, B);
  const c10::cuda::CUDAGuard guard(grad.device());
  auto gg = at::empty(with_leading(K, grad.sizes()), grad.options());
  C10_CUDA_CHECK(cuda::guidance_accumulate_bwd(dtype_of(grad), grad.data_ptr(), gw.data_ptr<float>(), K,
                                               gg.data_ptr(), B, n, c10::cuda::getCurrentCUDAStream()));
  return gg;
}

// seeds: (B,) int64 on CUDA, contiguous; n < 2^32.  Returns B.
int64_t check_draw(const at::Tensor& seeds, int64_t n) {
  FP_CHECK_DEVICE(seeds, at::kCUDA);
  FP_CHECK_DTYPE(seeds, at::kLong);
  FP_CHECK_DIM(seeds, 1);
  FP_CHECK_CONTIGUOUS(seeds);
  TORCH_CHECK(n >= 0 && n < (int64_t(1) << 32), "n must be in [0, 2^32)");
  return seeds.size(0);
}

at::Tensor normal_cuda(const at::Tensor& seeds, int64_t n, int64_t step, int64_t purpose, int64_t round) {
  const int64_t B = check_draw(seeds, n);
  const c10::cuda::CUDAGuard guard(seeds.device());
  auto out = at::empty({B, n}, seeds.options().dtype(at::kFloat));
  C10_CUDA_CHECK(cuda::normal_fwd(seeds.data_ptr<int64_t>(), out.data_ptr<float>(), B, n,
                                  static_cast<uint32_t>(step), static_cast<uint32_t>(purpose),
                                  static_cast<uint32_t>(round), c10::cuda::getCurrentCUDAStream()));
  return out;
}

at::Tensor philox_bits_cuda(const at::Tensor& seeds, int64_t n, int64_t step, int64_t purpose, int64_t round) {
  const int64_t B = check_draw(seeds, n);
  const c10::cuda::CUDAGuard guard(seeds.device());
  auto out = at::empty({2, B, n}, seeds.options());
  C10_CUDA_CHECK(cuda::philox_bits_fwd(seeds.data_ptr<int64_t>(), out.data_ptr<int64_t>(), B, n,
                                       static_cast<uint32_t>(step), static_cast<uint32_t>(purpose),
                                       static_cast<uint32_t>(round), c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastpurify, CUDA, m) {
  m.impl("forward_diffuse", &forward_diffuse_cuda);
  m.impl("forward_diffuse_bwd", &forward_diffuse_bwd_cuda);
  m.impl("sampler_step", &sampler_step_cuda);
  m.impl("sampler_step_bwd", &sampler_step_bwd_cuda);
  m.impl("guidance_accumulate", &guidance_accumulate_cuda);
  m.impl("guidance_accumulate_bwd", &guidance_accumulate_bwd_cuda);
  m.impl("normal", &normal_cuda);
  m.impl("philox_bits", &philox_bits_cuda);
}

}  // namespace fastpurify
