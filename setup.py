"""Build of fastpurify's compiled ops (`fastpurify._C`) with torch.utils.cpp_extension + ninja.

    pip install --no-build-isolation -e .      # uses the torch already installed (see README)

Knobs (environment): FASTPURIFY_NO_EXTENSION=1 → pure-Python install (torch and Triton paths only);
FASTPURIFY_WITH_CUDA=0/1 → force the CUDA sources off/on (default: on when torch has CUDA and nvcc is found);
FASTPURIFY_CUDA_ARCHS (default "80;90").
"""

import glob
import os

from setuptools import setup


def extensions():
    if os.environ.get("FASTPURIFY_NO_EXTENSION") == "1":
        return [], {}
    import torch
    from torch.utils import cpp_extension as ce

    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-std=c++20", "-fopenmp"]
    want_cuda = os.environ.get("FASTPURIFY_WITH_CUDA")
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    has_cuda = torch.version.cuda is not None and ce.CUDA_HOME is not None and bool(cuda_sources)
    if want_cuda == "1" and not has_cuda:
        raise RuntimeError("FASTPURIFY_WITH_CUDA=1 but torch has no CUDA or nvcc/CUDA_HOME was not found")
    use_cuda = has_cuda if want_cuda is None else (want_cuda == "1")
    if use_cuda:
        archs = os.environ.get("FASTPURIFY_CUDA_ARCHS", "80;90").split(";")
        nvcc = ["-O3", "-std=c++20", "--use_fast_math"] + [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        # The CUDA build of torch ships CUDA headers (nvidia/cu*/include) that nvcc must see.
        nvcc += [f"-I{d}" for d in glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*",
                                                          "include"))]
        ext = ce.CUDAExtension("fastpurify._C", sources + cuda_sources,
                               extra_compile_args={"cxx": cxx + ["-DFASTPURIFY_WITH_CUDA"], "nvcc": nvcc},
                               extra_link_args=["-fopenmp"])
    else:
        ext = ce.CppExtension("fastpurify._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": ce.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
