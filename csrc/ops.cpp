// Schemas of fastpurify's fused ops (torch.ops.fastpurify.*) and the Python module stub for fastpurify._C.
// Implementations register per device in cpu/*.cpp and (with CUDA) cuda/*.cpp.
#include <Python.h>
#include <torch/library.h>

#include <string>

TORCH_LIBRARY(fastpurify, m) {
  // x_t[b] = a[t_b]·x0[b] + s[t_b]·ξ(seeds[b], step, purpose, round, element)
  m.def("forward_diffuse(Tensor x0, Tensor a, Tensor s, Tensor t, Tensor seeds, int step, int purpose, int round)"
        " -> Tensor");
  // (B, n) float32 standard normals, sample b from Philox stream seeds[b] (reference/philox.py)
  m.def("normal(Tensor seeds, int n, int step, int purpose, int round) -> Tensor");
  m.def("build_info() -> str");
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

TORCH_LIBRARY_IMPL(fastpurify, CompositeExplicitAutograd, m) { m.impl("build_info", &build_info); }

// Importing fastpurify._C only has to run the static registrations above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fastpurify compiled ops (torch.ops.fastpurify)",
                                   -1, nullptr};
  return PyModule_Create(&def);
}
