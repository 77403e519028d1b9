// C++ CPU kernels: forward diffusion with in-op Philox noise (and its backward), the noise alone and its raw words.
// Each element's noise depends only on its own counter, so tiles run in any order on any thread.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "../checks.h"
#include "loops.h"
#include "tile.h"

namespace fastpurify {
namespace {

// x_t = a[t_b]·x0 + s[t_b]·ξ, with the coefficients cast to x0's dtype first (as the reference does).
template <typename scalar_t>
void forward_diffuse_kernel(const scalar_t* x0, scalar_t* out, const float* a, const float* s, const int64_t* t,
                            const int64_t* seeds, int64_t B, int64_t n, uint32_t step, uint32_t purpose,
                            uint32_t round) {
  const Isa isa = cpu_isa();
  for_each_tile(B, n, [&](int64_t b, int64_t e0, int64_t len) {
    float z[kTile];
    noise_tile(z, static_cast<uint64_t>(seeds[b]), e0, len, step, purpose, round);
    diffuse_tile(isa, x0 + b * n + e0, z, static_cast<scalar_t>(a[t[b]]), static_cast<scalar_t>(s[t[b]]),
                 out + b * n + e0, len);
  });
}

void check_index(const at::Tensor& t, int64_t T, int64_t B) {
  FP_CHECK_DEVICE(t, at::kCPU);
  FP_CHECK_DTYPE(t, at::kLong);
  TORCH_CHECK(t.numel() == B, "t must have one entry per sample (", B, ")");
  const auto tc = t.contiguous();
  const int64_t* tp = tc.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(tp[b] >= 0 && tp[b] < T, "t[", b, "] = ", tp[b], " outside [0, ", T, ")");
}

void check_table(const at::Tensor& a) {
  FP_CHECK_DEVICE(a, at::kCPU);
  FP_CHECK_DTYPE(a, at::kFloat);
  FP_CHECK_DIM(a, 1);
}

void check_input(const at::Tensor& x) {
  FP_CHECK_DEVICE(x, at::kCPU);
  TORCH_CHECK(x.dim() >= 1 && x.size(0) > 0, "x must be (B, ...) with B > 0");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, "x must be float32 or float64");
  TORCH_CHECK(x.numel() / x.size(0) < (int64_t(1) << 32), "at most 2^32 elements per sample");
}

at::Tensor forward_diffuse_cpu(const at::Tensor& x0, const at::Tensor& a, const at::Tensor& s, const at::Tensor& t,
                               const at::Tensor& seeds, int64_t step, int64_t purpose, int64_t round) {
  check_input(x0);
  const int64_t B = x0.size(0), n = x0.numel() / B;
  check_table(a);
  check_table(s);
  TORCH_CHECK(a.numel() == s.numel(), "tables a and s must have the same length");
  check_index(t, a.numel(), B);
  FP_CHECK_DEVICE(seeds, at::kCPU);
  FP_CHECK_DTYPE(seeds, at::kLong);
  TORCH_CHECK(seeds.numel() == B, "seeds must have one entry per sample (", B, ")");
  const auto x = x0.contiguous(), ac = a.contiguous(), sc = s.contiguous(), tc = t.contiguous(),
             kc = seeds.contiguous();
  auto out = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "forward_diffuse_cpu", [&] {
    forward_diffuse_kernel<scalar_t>(x.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), ac.data_ptr<float>(),
                                     sc.data_ptr<float>(), tc.data_ptr<int64_t>(), kc.data_ptr<int64_t>(), B, n,
                                     static_cast<uint32_t>(step), static_cast<uint32_t>(purpose),
                                     static_cast<uint32_t>(round));
  });
  return out;
}

// ∂L/∂x0 = a[t_b]·∂L/∂x_t: a per-sample scale (the noise term has no gradient).
at::Tensor forward_diffuse_bwd_cpu(const at::Tensor& grad, const at::Tensor& a, const at::Tensor& t) {
  check_input(grad);
  check_table(a);
  const int64_t B = grad.size(0), n = grad.numel() / B;
  check_index(t, a.numel(), B);
  const auto go = grad.contiguous(), ac = a.contiguous(), tc = t.contiguous();
  auto gx = at::empty_like(go);
  AT_DISPATCH_FLOATING_TYPES(go.scalar_type(), "forward_diffuse_bwd_cpu", [&] {
    const scalar_t* gp = go.data_ptr<scalar_t>();
    scalar_t* xp = gx.data_ptr<scalar_t>();
    const float* ap = ac.data_ptr<float>();
    const int64_t* tp = tc.data_ptr<int64_t>();
    const Isa isa = cpu_isa();
    for_each_tile(B, n, [&](int64_t b, int64_t e0, int64_t len) {
      scale_tile(isa, gp + b * n + e0, static_cast<scalar_t>(ap[tp[b]]), xp + b * n + e0, len);
    });
  });
  return gx;
}

void check_draw(const at::Tensor& seeds, int64_t n) {
  FP_CHECK_DEVICE(seeds, at::kCPU);
  FP_CHECK_DTYPE(seeds, at::kLong);
  FP_CHECK_DIM(seeds, 1);
  TORCH_CHECK(n >= 0 && n < (int64_t(1) << 32), "n must be in [0, 2^32)");
}

at::Tensor normal_cpu(const at::Tensor& seeds, int64_t n, int64_t step, int64_t purpose, int64_t round) {
  check_draw(seeds, n);
  const auto kc = seeds.contiguous();
  const int64_t B = kc.numel();
  auto out = at::empty({B, n}, kc.options().dtype(at::kFloat));
  const int64_t* sp = kc.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  for_each_tile(B, n, [&](int64_t b, int64_t e0, int64_t len) {
    noise_tile(op + b * n + e0, static_cast<uint64_t>(sp[b]), e0, len, static_cast<uint32_t>(step),
               static_cast<uint32_t>(purpose), static_cast<uint32_t>(round));
  });
  return out;
}

// The raw words behind normal_cpu, widened to int64 (2, B, n): the tests' bit-for-bit check of the Philox path.
at::Tensor philox_bits_cpu(const at::Tensor& seeds, int64_t n, int64_t step, int64_t purpose, int64_t round) {
  check_draw(seeds, n);
  const auto kc = seeds.contiguous();
  const int64_t B = kc.numel();
  auto out = at::empty({2, B, n}, kc.options());
  const int64_t* sp = kc.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  const Isa isa = cpu_isa();
  for_each_tile(B, n, [&](int64_t b, int64_t e0, int64_t len) {
    uint32_t r0[kTile], r1[kTile];
    philox_words(isa, r0, r1, static_cast<uint64_t>(sp[b]), e0, len, static_cast<uint32_t>(step),
                 static_cast<uint32_t>(purpose), static_cast<uint32_t>(round));
    for (int64_t j = 0; j < len; ++j) {
      op[b * n + e0 + j] = r0[j];
      op[B * n + b * n + e0 + j] = r1[j];
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastpurify, CPU, m) {
  m.impl("forward_diffuse", &forward_diffuse_cpu);
  m.impl("forward_diffuse_bwd", &forward_diffuse_bwd_cpu);
  m.impl("normal", &normal_cpu);
  m.impl("philox_bits", &philox_bits_cpu);
}

}  // namespace fastpurify
