// The Python module fastpurify._C: importing it only has to load this library, whose static registrations
// (ops.cpp, cpu/*.cpp, cuda/*.cpp) put the ops into torch.ops.fastpurify.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fastpurify compiled ops (torch.ops.fastpurify)",
                                   -1, nullptr};
  return PyModule_Create(&def);
}
