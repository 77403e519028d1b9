// C++ CPU kernels: the fused reverse step (every sampler family is one coefficient row) and guidance accumulation.
// Spec: fastpurify/ops/reference/sampler_step.py.  Row c = coef[k] = [q0, q1, p0, p1, p2, sigma, s_g]:
//   x0 = q0·x − q1·ε (clamped to [−1, 1] if clip)
//   out = p0·x0 + p1·x + p2·ε + sigma·ξ(seed_b, k) + s_g·Σ_j gw[j,b]·g[j,b]
// x, ε: (B, n); g: (K, B, n); gw: (K, B); coef: (S, 7) in x's dtype (float or double); k: 0-dim int64.
// The element loops are in loops.cpp (compiled per instruction set, the one of cpu_isa() read here once per op);
// this file tiles, checks and dispatches.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "loops.h"
#include "tile.h"

namespace fastpurify {
namespace {

constexpr int64_t kCoef = 7;

template <typename T>
Coefs<T> row_at(const T* coef, int64_t row) {
  const T* c = coef + row * kCoef;
  return Coefs<T>{c[0], c[1], c[2], c[3], c[4], c[5], c[6]};
}

template <typename T>
void step_fwd_kernel(const T* x, const T* eps, const T* g, const T* gw, int64_t K, const Coefs<T> c, bool clip,
                     const int64_t* seeds, T* out, int64_t B, int64_t n, uint32_t step, uint32_t purpose,
                     uint32_t round) {
  const bool noisy = c.sigma != T(0);  // DDIM η = 0 and final steps draw no noise
  const Isa isa = cpu_isa();
  for_each_tile(B, n, [&](int64_t b, int64_t e0, int64_t len) {
    float z[kTile];
    if (noisy) noise_tile(z, static_cast<uint64_t>(seeds[b]), e0, len, step, purpose, round);
    const int64_t o = b * n + e0;
    // Same operation order as the reference: p-terms, + σ·ξ, + s_g·(Σ_j gw[j,b]·g[j,b]).
    step_tile(isa, x + o, eps + o, noisy ? z : nullptr, c, clip, out + o, len);
    if (g != nullptr) {
      T acc[kTile];
      scale_tile(isa, g + o, gw[b], acc, len);
      for (int64_t j = 1; j < K; ++j) axpy_tile(isa, g + j * B * n + o, gw[j * B + b], acc, len);
      axpy_tile(isa, acc, c.sg, out + o, len);
    }
  });
}

// Backward.  With m = 1[−1 < x0 < 1] (m = 1 without clip; torch's clamp gradient is 0 on the boundary):
//   ∂out/∂x = p1 + p0·q0·m,   ∂out/∂ε = p2 − p0·q1·m,   ∂out/∂g[j,b] = s_g·gw[j,b].
// The noise is additive, so it is neither stored nor regenerated.
template <typename T>
void step_bwd_kernel(const T* go, const T* x, const T* eps, const T* gw, int64_t K, const Coefs<T> c, bool clip,
                     T* gx, T* geps, T* gg, int64_t B, int64_t n) {
  const Isa isa = cpu_isa();
  for_each_tile(B, n, [&](int64_t b, int64_t e0, int64_t len) {
    const int64_t o = b * n + e0;
    step_bwd_tile(isa, go + o, clip ? x + o : nullptr, clip ? eps + o : nullptr, c, clip, gx + o, geps + o, len);
    if (gg != nullptr)
      for (int64_t j = 0; j < K; ++j) {
        T* gp = gg + j * B * n + o;
        scale_tile(isa, go + o, gw[j * B + b], gp, len);  // (gw·∂L/∂out)·s_g, the reference's rounding order
        scale_tile(isa, gp, c.sg, gp, len);
      }
  });
}

void check_like(const at::Tensor& v, const at::Tensor& x, const char* name) {
  TORCH_CHECK(v.sizes() == x.sizes() && v.scalar_type() == x.scalar_type() && v.device() == x.device(), name,
              " must match x ", x.sizes(), " ", x.scalar_type(), ", got ", v.sizes(), " ", v.scalar_type());
}

// g: (K, B, ...) like x: (B, ...) with K ≥ 1; gw: (K, B) in x's dtype.  Returns K.
int64_t check_guidance(const at::Tensor& g, const at::Tensor& gw, const at::Tensor& x) {
  TORCH_CHECK(g.dim() == x.dim() + 1 && g.size(0) > 0 && g.sizes().slice(1) == x.sizes(),
              "g must be (K, ", x.sizes(), "), got ", g.sizes());
  TORCH_CHECK(g.scalar_type() == x.scalar_type(), "g must be ", x.scalar_type(), ", got ", g.scalar_type());
  FP_CHECK_DEVICE(g, at::kCPU);
  FP_CHECK_DEVICE(gw, at::kCPU);
  FP_CHECK_DTYPE(gw, x.scalar_type());
  TORCH_CHECK(gw.dim() == 2 && gw.size(0) == g.size(0) && gw.size(1) == x.size(0), "gw must be (K, B) = (",
              g.size(0), ", ", x.size(0), "), got ", gw.sizes());
  return g.size(0);
}

// The row index, read on the host (CPU tensors: no device round-trip) and range-checked.
int64_t check_row(const at::Tensor& coef, const at::Tensor& k, const at::Tensor& x) {
  FP_CHECK_DEVICE(coef, at::kCPU);
  FP_CHECK_DTYPE(coef, x.scalar_type());
  TORCH_CHECK(coef.dim() == 2 && coef.size(1) == kCoef, "coef must be (S, 7), got ", coef.sizes());
  FP_CHECK_DEVICE(k, at::kCPU);
  FP_CHECK_DTYPE(k, at::kLong);
  FP_CHECK_DIM(k, 0);
  const int64_t row = k.item<int64_t>();
  TORCH_CHECK(row >= 0 && row < coef.size(0), "k = ", row, " outside [0, ", coef.size(0), ")");
  return row;
}

void check_x(const at::Tensor& x) {
  FP_CHECK_DEVICE(x, at::kCPU);
  TORCH_CHECK(x.dim() >= 1 && x.size(0) > 0, "x must be (B, ...) with B > 0");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x must be float32 or float64, got ",
              x.scalar_type());
  TORCH_CHECK(x.numel() / x.size(0) < (int64_t(1) << 32), "at most 2^32 elements per sample");
}

at::Tensor sampler_step_cpu(const at::Tensor& x, const at::Tensor& eps, const std::optional<at::Tensor>& g,
                            const std::optional<at::Tensor>& gw, const at::Tensor& coef, const at::Tensor& k,
                            const at::Tensor& seeds, bool clip, int64_t purpose, int64_t round) {
  check_x(x);
  check_like(eps, x, "eps");
  const int64_t row = check_row(coef, k, x);
  const int64_t B = x.size(0), n = x.numel() / B;
  FP_CHECK_DEVICE(seeds, at::kCPU);
  FP_CHECK_DTYPE(seeds, at::kLong);
  TORCH_CHECK(seeds.dim() == 1 && seeds.numel() == B, "seeds must be (", B, "), got ", seeds.sizes());
  TORCH_CHECK(g.has_value() == gw.has_value(), "g and gw come together");
  const int64_t K = g.has_value() ? check_guidance(*g, *gw, x) : 0;
  const auto xc = x.contiguous(), ec = eps.contiguous(), cc = coef.contiguous(), sc = seeds.contiguous();
  const auto gc = g.has_value() ? g->contiguous() : at::Tensor(), wc = gw.has_value() ? gw->contiguous() : at::Tensor();
  auto out = at::empty_like(xc);
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "sampler_step_cpu", [&] {
    step_fwd_kernel<scalar_t>(xc.data_ptr<scalar_t>(), ec.data_ptr<scalar_t>(), K ? gc.data_ptr<scalar_t>() : nullptr,
                              K ? wc.data_ptr<scalar_t>() : nullptr, K, row_at(cc.data_ptr<scalar_t>(), row), clip,
                              sc.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), B, n, static_cast<uint32_t>(row),
                              static_cast<uint32_t>(purpose), static_cast<uint32_t>(round));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sampler_step_bwd_cpu(
    const at::Tensor& grad, const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& eps,
    const std::optional<at::Tensor>& gw, const at::Tensor& coef, const at::Tensor& k, bool clip, bool need_g) {
  check_x(grad);
  const int64_t row = check_row(coef, k, grad);
  const int64_t B = grad.size(0), n = grad.numel() / B;
  TORCH_CHECK(!clip || (x.has_value() && eps.has_value()), "clip needs x and eps for the clamp mask");
  if (clip) {
    check_like(*x, grad, "x");
    check_like(*eps, grad, "eps");
  }
  TORCH_CHECK(!need_g || gw.has_value(), "need_g needs gw");
  int64_t K = 0;
  if (need_g) {
    FP_CHECK_DEVICE(*gw, at::kCPU);
    FP_CHECK_DTYPE(*gw, grad.scalar_type());
    TORCH_CHECK(gw->dim() == 2 && gw->size(1) == B, "gw must be (K, ", B, "), got ", gw->sizes());
    K = gw->size(0);
  }
  const auto go = grad.contiguous(), cc = coef.contiguous();
  const auto xc = clip ? x->contiguous() : at::Tensor(), ec = clip ? eps->contiguous() : at::Tensor();
  const auto wc = need_g ? gw->contiguous() : at::Tensor();
  auto gx = at::empty_like(go), geps = at::empty_like(go);
  std::vector<int64_t> gshape{K};
  gshape.insert(gshape.end(), go.sizes().begin(), go.sizes().end());
  auto gg = need_g ? at::empty(gshape, go.options()) : at::empty({0}, go.options());
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "sampler_step_bwd_cpu", [&] {
    step_bwd_kernel<scalar_t>(go.data_ptr<scalar_t>(), clip ? xc.data_ptr<scalar_t>() : nullptr,
                              clip ? ec.data_ptr<scalar_t>() : nullptr, need_g ? wc.data_ptr<scalar_t>() : nullptr, K,
                              row_at(cc.data_ptr<scalar_t>(), row), clip, gx.data_ptr<scalar_t>(),
                              geps.data_ptr<scalar_t>(), need_g ? gg.data_ptr<scalar_t>() : nullptr, B, n);
  });
  return {gx, geps, gg};
}

// G[b] = Σ_j gw[j,b]·g[j,b]:  g (K, B, ...), gw (K, B) → (B, ...).
at::Tensor guidance_accumulate_cpu(const at::Tensor& g, const at::Tensor& gw) {
  FP_CHECK_DEVICE(g, at::kCPU);
  TORCH_CHECK(g.dim() >= 2 && g.size(0) > 0, "g must be (K, B, ...), got ", g.sizes());
  const auto like = g.select(0, 0);
  check_x(like);
  const int64_t K = check_guidance(g, gw, like), B = g.size(1), n = like.numel() / B;
  const auto gc = g.contiguous(), wc = gw.contiguous();
  auto out = at::empty(like.sizes(), gc.options());
  AT_DISPATCH_FLOATING_TYPES(gc.scalar_type(), "guidance_accumulate_cpu", [&] {
    const scalar_t* gp = gc.data_ptr<scalar_t>();
    const scalar_t* wp = wc.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    const Isa isa = cpu_isa();
    for_each_tile(B, n, [&](int64_t b, int64_t e0, int64_t len) {
      const int64_t o = b * n + e0;
      scale_tile(isa, gp + o, wp[b], op + o, len);
      for (int64_t j = 1; j < K; ++j) axpy_tile(isa, gp + j * B * n + o, wp[j * B + b], op + o, len);
    });
  });
  return out;
}

// ∂L/∂g[j,b] = gw[j,b]·∂L/∂G[b]  → (K, B, ...).
at::Tensor guidance_accumulate_bwd_cpu(const at::Tensor& grad, const at::Tensor& gw) {
  check_x(grad);
  FP_CHECK_DEVICE(gw, at::kCPU);
  FP_CHECK_DTYPE(gw, grad.scalar_type());
  const int64_t B = grad.size(0), n = grad.numel() / B;
  TORCH_CHECK(gw.dim() == 2 && gw.size(1) == B && gw.size(0) > 0, "gw must be (K, ", B, "), got ", gw.sizes());
  const int64_t K = gw.size(0);
  const auto go = grad.contiguous(), wc = gw.contiguous();
  std::vector<int64_t> shape{K};
  shape.insert(shape.end(), go.sizes().begin(), go.sizes().end());
  auto gg = at::empty(shape, go.options());
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "guidance_accumulate_bwd_cpu", [&] {
    const scalar_t* gp = go.data_ptr<scalar_t>();
    const scalar_t* wp = wc.data_ptr<scalar_t>();
    scalar_t* op = gg.data_ptr<scalar_t>();
    const Isa isa = cpu_isa();
    for_each_tile(B, n, [&](int64_t b, int64_t e0, int64_t len) {
      for (int64_t j = 0; j < K; ++j)
        scale_tile(isa, gp + b * n + e0, wp[j * B + b], op + j * B * n + b * n + e0, len);
    });
  });
  return gg;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastpurify, CPU, m) {
  m.impl("sampler_step", &sampler_step_cpu);
  m.impl("sampler_step_bwd", &sampler_step_bwd_cpu);
  m.impl("guidance_accumulate", &guidance_accumulate_cpu);
  m.impl("guidance_accumulate_bwd", &guidance_accumulate_bwd_cpu);
}

}  // namespace fastpurify
