// C++ CPU kernels: forward diffusion with in-op Philox noise, and the noise alone.
// Parallel over (sample, element) with at::parallel_for; each element's noise depends only on its own counter.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <type_traits>

#include "../checks.h"
#include "../philox.h"

namespace fastpurify {
namespace {

template <typename scalar_t>
void forward_diffuse_kernel(const scalar_t* x0, scalar_t* out, const float* a, const float* s, const int64_t* t,
                            const int64_t* seeds, int64_t B, int64_t n, uint32_t step, uint32_t purpose,
                            uint32_t round) {
  at::parallel_for(0, B * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / n;
      const uint32_t e = static_cast<uint32_t>(i - b * n);
      // Same arithmetic as the reference: coefficients cast to x0's dtype (float or double), then a·x0 + s·ξ.
      using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const acc_t z = philox_normal(static_cast<uint64_t>(seeds[b]), e, step, purpose, round);
      out[i] = static_cast<scalar_t>(acc_t(a[t[b]]) * acc_t(x0[i]) + acc_t(s[t[b]]) * z);
    }
  });
}

void check_tables(const at::Tensor& a, const at::Tensor& s, const at::Tensor& t, const at::Tensor& seeds,
                  int64_t B) {
  for (const auto* x : {&a, &s}) {
    FP_CHECK_DEVICE(*x, at::kCPU);
    FP_CHECK_DTYPE(*x, at::kFloat);
    FP_CHECK_DIM(*x, 1);
  }
  TORCH_CHECK(a.numel() == s.numel(), "tables a and s must have the same length");
  FP_CHECK_DTYPE(t, at::kLong);
  FP_CHECK_DTYPE(seeds, at::kLong);
  TORCH_CHECK(t.numel() == B && seeds.numel() == B, "t and seeds must have one entry per sample (", B, ")");
  const int64_t T = a.numel();
  const auto tc = t.contiguous();
  const int64_t* tp = tc.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(tp[b] >= 0 && tp[b] < T, "t[", b, "] = ", tp[b], " outside [0, ", T, ")");
}

at::Tensor forward_diffuse_cpu(const at::Tensor& x0, const at::Tensor& a, const at::Tensor& s, const at::Tensor& t,
                               const at::Tensor& seeds, int64_t step, int64_t purpose, int64_t round) {
  FP_CHECK_DEVICE(x0, at::kCPU);
  TORCH_CHECK(x0.dim() >= 1 && x0.size(0) > 0, "x0 must be (B, ...) with B > 0");
  TORCH_CHECK(x0.scalar_type() == at::kFloat || x0.scalar_type() == at::kDouble, "x0 must be float32 or float64");
  const int64_t B = x0.size(0), n = x0.numel() / B;
  TORCH_CHECK(n < (int64_t(1) << 32), "at most 2^32 elements per sample");
  check_tables(a, s, t, seeds, B);
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

at::Tensor normal_cpu(const at::Tensor& seeds, int64_t n, int64_t step, int64_t purpose, int64_t round) {
  FP_CHECK_DEVICE(seeds, at::kCPU);
  FP_CHECK_DTYPE(seeds, at::kLong);
  FP_CHECK_DIM(seeds, 1);
  TORCH_CHECK(n >= 0 && n < (int64_t(1) << 32), "n must be in [0, 2^32)");
  const auto kc = seeds.contiguous();
  const int64_t B = kc.numel();
  auto out = at::empty({B, n}, kc.options().dtype(at::kFloat));
  const int64_t* sp = kc.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * n, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / n;
      op[i] = philox_normal(static_cast<uint64_t>(sp[b]), static_cast<uint32_t>(i - b * n),
                            static_cast<uint32_t>(step), static_cast<uint32_t>(purpose), static_cast<uint32_t>(round));
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastpurify, CPU, m) {
  m.impl("forward_diffuse", &forward_diffuse_cpu);
  m.impl("normal", &normal_cpu);
}

}  // namespace fastpurify
