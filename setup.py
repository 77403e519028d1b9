"""Build of fastpurify's compiled ops (`fastpurify._C`) with torch.utils.cpp_extension + ninja.

    pip install --no-build-isolation -e .      # uses the torch already installed (see README)

Knobs (environment): FASTPURIFY_NO_EXTENSION=1 → pure-Python install (torch and Triton paths only);
FASTPURIFY_WITH_CUDA=0/1 → force the CUDA sources off/on (default: on when torch has CUDA and a CUDA toolkit with
nvcc is found); FASTPURIFY_CUDA_ARCHS (default "80;90": machine code for each, plus PTX of the newest, so newer
GPUs run it too); CUDA_HOME (default: found from nvcc or /usr/local/cuda).
"""

import glob
import os
import shutil

from setuptools import setup


def _cuda_home():
    """The toolkit root (…/bin/nvcc, …/include/cuda_runtime.h).  Found before torch.utils.cpp_extension is imported,
    because it reads CUDA_HOME once; its own guess is nvcc's parent folder, wrong when nvcc is a wrapper script
    (e.g. /usr/local/bin/nvcc → CUDA_HOME=/usr/local, which has no CUDA headers)."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += sorted(glob.glob("/usr/local/cuda*"), reverse=True)
    for root in candidates:
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")) and os.path.exists(
                os.path.join(root, "bin", "nvcc")):
            return root
    return None


def extensions():
    if os.environ.get("FASTPURIFY_NO_EXTENSION") == "1":
        return [], {}
    home = _cuda_home()
    if home:
        os.environ["CUDA_HOME"] = home
    import torch
    from torch.utils import cpp_extension as ce

    sources = ["csrc/module.cpp", "csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    # -g0: Python's CFLAGS carry -g, which doubles the compile time of every torch-including file.
    # -ffp-contract=off: no FMA contraction, so every instruction set computes the reference's rounding steps (and
    # the noise gets the same bits on each); -fno-math-errno: sqrt vectorises (errno is never read).
    cxx = ["-O3", "-g0", "-std=c++20", "-fopenmp", "-ffp-contract=off", "-fno-math-errno"]
    want_cuda = os.environ.get("FASTPURIFY_WITH_CUDA")
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    has_cuda = torch.version.cuda is not None and home is not None and bool(cuda_sources)
    if want_cuda == "1" and not has_cuda:
        raise RuntimeError("FASTPURIFY_WITH_CUDA=1 but torch has no CUDA or no CUDA toolkit (nvcc, CUDA_HOME) "
                           "was found")
    use_cuda = has_cuda if want_cuda is None else (want_cuda == "1")
    if use_cuda:
        archs = os.environ.get("FASTPURIFY_CUDA_ARCHS", "80;90").split(";")
        # No --use_fast_math: the Box–Muller noise must match the reference to an ulp (precise logf/cosf).
        nvcc = ["-O3", "-std=c++20"] + [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        # Plus PTX of the newest listed arch (compute_90 by default): a newer GPU JIT-compiles it when loading.
        ptx = max(archs, key=lambda a: int("".join(c for c in a if c.isdigit())))
        nvcc.append(f"-gencode=arch=compute_{ptx},code=compute_{ptx}")
        # The CUDA build of torch ships CUDA headers (nvidia/cu*/include) its own headers may need.
        torch_cuda_includes = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*",
                                                     "include"))
        nvcc += [f"-I{d}" for d in torch_cuda_includes]
        ext = ce.CUDAExtension("fastpurify._C", sources + cuda_sources,
                               extra_compile_args={"cxx": cxx + ["-DFASTPURIFY_WITH_CUDA"], "nvcc": nvcc},
                               extra_link_args=["-fopenmp"])
    else:
        ext = ce.CppExtension("fastpurify._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": ce.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
