// The compiled ops through torch's dispatcher, as any C++ or Python caller reaches them, against golden values
// printed by the torch reference (fastpurify/ops/reference: philox_bits, normal_ref, forward_diffuse_ref) for
// seeds (7, −2⁶² + 12345), 37 elements, step 3, purpose 1, round 2.  Run by ctest (CMakeLists.txt).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdint>
#include <cstdio>

#include "expect.h"

namespace {

using Draw = at::Tensor(const at::Tensor&, int64_t, int64_t, int64_t, int64_t);
using Diffuse = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const at::Tensor&, int64_t, int64_t, int64_t);

template <typename F>
c10::TypedOperatorHandle<F> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<F>();
}

// Same tolerance as tests/test_philox.py: a few ulps of Box–Muller's float32 log/cos.
bool close(float got, double want) { return std::fabs(got - want) <= 2e-6 + 2e-6 * std::fabs(want); }

const int64_t kIdx[3] = {0, 1, 36};
const uint32_t kR0[2][3] = {{0x7a2c4771u, 0x96b0ec5fu, 0xe9f7cf39u}, {0x861436e3u, 0x128a4e51u, 0xd0a1d50au}};
const uint32_t kR1[2][3] = {{0x62cd6f3fu, 0xc2a04178u, 0xa2d6feb4u}, {0xb4d88e42u, 0xc80ceb00u, 0x5d9292d5u}};
const int64_t kZIdx[5] = {0, 1, 2, 35, 36};
const double kZ[2][5] = {{-0.917159736, 0.0663077459, 1.63048184, -0.234315559, -0.278367788},
                         {-0.307480723, 0.449810743, 0.480426937, -1.18498671, -0.424596518}};
// forward_diffuse of x0 = 0.5 with a = (0.9, 0.6), s = (0.1, 0.8), t = (1, 0): elements 0 and 36
const double kX[2][2] = {{-0.433727801, 0.0773057789}, {0.419251919, 0.407540321}};

}  // namespace

int main() {
  const auto seeds = at::tensor({int64_t(7), -(int64_t(1) << 62) + 12345}, at::kLong);
  const auto bits = op<Draw>("fastpurify::philox_bits").call(seeds, 37, 3, 1, 2);
  EXPECT(bits.sizes() == at::IntArrayRef({2, 2, 37}) && bits.scalar_type() == at::kLong, "philox_bits shape/dtype");
  const auto z = op<Draw>("fastpurify::normal").call(seeds, 37, 3, 1, 2);
  EXPECT(z.sizes() == at::IntArrayRef({2, 37}) && z.scalar_type() == at::kFloat, "normal shape/dtype");
  const auto x = op<Diffuse>("fastpurify::forward_diffuse")
                     .call(at::full({2, 37}, 0.5f), at::tensor({0.9f, 0.6f}), at::tensor({0.1f, 0.8f}),
                           at::tensor({int64_t(1), int64_t(0)}, at::kLong), seeds, 3, 1, 2);
  for (int b = 0; b < 2; ++b) {
    for (int i = 0; i < 3; ++i) {
      const int64_t e = kIdx[i];
      const auto r0 = static_cast<uint32_t>(bits[0][b][e].item<int64_t>());
      const auto r1 = static_cast<uint32_t>(bits[1][b][e].item<int64_t>());
      EXPECT(r0 == kR0[b][i] && r1 == kR1[b][i], "words [%d, %lld]: %08x %08x, want %08x %08x", b, (long long)e, r0,
            r1, kR0[b][i], kR1[b][i]);
    }
    for (int i = 0; i < 5; ++i) {
      const float v = z[b][kZIdx[i]].item<float>();
      EXPECT(close(v, kZ[b][i]), "normal [%d, %lld]: %.9g, want %.9g", b, (long long)kZIdx[i], v, kZ[b][i]);
    }
    for (int i = 0; i < 2; ++i) {
      const float v = x[b][i ? 36 : 0].item<float>();
      EXPECT(close(v, kX[b][i]), "forward_diffuse [%d, %d]: %.9g, want %.9g", b, i ? 36 : 0, v, kX[b][i]);
    }
  }
  return fastpurify_test::finish();
}
