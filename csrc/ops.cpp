// Schemas of fastpurify's fused ops (torch.ops.fastpurify.*).  Implementations register per device in cpu/*.cpp and
// (with CUDA) cuda/*.cpp; the Python module stub of fastpurify._C is module.cpp, so the C++ tests link without Python.
#include <torch/library.h>

#include <string>

#include "cpu/isa.h"

TORCH_LIBRARY(fastpurify, m) {
  // x_t[b] = a[t_b]·x0[b] + s[t_b]·ξ(seeds[b], step, purpose, round, element)
  m.def("forward_diffuse(Tensor x0, Tensor a, Tensor s, Tensor t, Tensor seeds, int step, int purpose, int round)"
        " -> Tensor");
  // ∂L/∂x0 = a[t_b]·∂L/∂x_t
  m.def("forward_diffuse_bwd(Tensor grad, Tensor a, Tensor t) -> Tensor");
  // One reverse step, row c = coef[k] = [q0, q1, p0, p1, p2, sigma, s_g] (fastpurify/ops/reference/sampler_step.py):
  // out = p0·clip?(q0·x − q1·eps) + p1·x + p2·eps + sigma·ξ(seeds[b], k, purpose, round) + s_g·Σ_j gw[j,b]·g[j,b]
  m.def("sampler_step(Tensor x, Tensor eps, Tensor? g, Tensor? gw, Tensor coef, Tensor k, Tensor seeds, bool clip,"
        " int purpose, int round) -> Tensor");
  // (∂L/∂x, ∂L/∂eps, ∂L/∂g — empty unless need_g); x and eps are read only when clip
  m.def("sampler_step_bwd(Tensor grad, Tensor? x, Tensor? eps, Tensor? gw, Tensor coef, Tensor k, bool clip,"
        " bool need_g) -> (Tensor, Tensor, Tensor)");
  // G[b] = Σ_j gw[j,b]·g[j,b] and its backward ∂L/∂g[j,b] = gw[j,b]·∂L/∂G[b]
  m.def("guidance_accumulate(Tensor g, Tensor gw) -> Tensor");
  m.def("guidance_accumulate_bwd(Tensor grad, Tensor gw) -> Tensor");
  // (B, n) float32 standard normals, sample b from Philox stream seeds[b] (fastpurify/ops/reference/philox.py)
  m.def("normal(Tensor seeds, int n, int step, int purpose, int round) -> Tensor");
  // (2, B, n) int64: the first two Philox words r0, r1 of those draws, as uint32 values (fastpurify/ops/reference/philox.py,
  // philox_bits) — what the tests compare bit for bit across backends
  m.def("philox_bits(Tensor seeds, int n, int step, int purpose, int round) -> Tensor");
  m.def("build_info() -> str");
  // the instruction set of the C++ CPU kernels (noise and element-wise loops) here: 'avx512', 'avx2' or 'baseline',
  // the widest this CPU runs capped by FASTPURIFY_CPU_ISA (csrc/cpu/isa.h)
  m.def("cpu_isa() -> str");
}

static std::string build_info() {
  std::string s = "cpu";
#ifdef FASTPURIFY_WITH_CUDA
  s += ",cuda";
#endif
#ifdef _OPENMP
  s += ";openmp";
#endif
  return s;
}

static std::string cpu_isa() { return fastpurify::isa_name(fastpurify::cpu_isa()); }

TORCH_LIBRARY_IMPL(fastpurify, CompositeExplicitAutograd, m) {
  m.impl("build_info", &build_info);
  m.impl("cpu_isa", &cpu_isa);
}
