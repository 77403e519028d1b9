"""Optional accelerated parts: the compiled extension `fastpurify._C` and Triton.  Importing fastpurify never fails
without them; each function here says why a part cannot run (None when it can) and how to fix it."""

from __future__ import annotations

import os
from functools import lru_cache


@lru_cache(maxsize=1)
def load_error() -> str | None:
    """None when `fastpurify._C` is loaded (its ops are in torch.ops.fastpurify), else why not and how to fix it."""
    try:
        from .. import _C  # noqa: F401  (importing registers the TORCH_LIBRARY ops)
    except ImportError as e:
        return (f"fastpurify._C is not built ({e}); build it with "
                "`pip install --no-build-isolation -e .` (see README, 'Build')")
    from . import fake

    fake.register()
    return None


def build_info() -> str:
    """'cpu', 'cpu,cuda', … as compiled, plus ';openmp' when OpenMP was used; '' when not built."""
    if load_error():
        return ""
    import torch

    return torch.ops.fastpurify.build_info()


def has_cuda_kernels() -> bool:
    return "cuda" in build_info().split(";")[0].split(",")


def cuda_error() -> str | None:
    """Why the CUDA kernels of fastpurify._C cannot run here (None when they can)."""
    import torch

    if load_error():
        return load_error()
    if not has_cuda_kernels():
        return ("fastpurify._C was built without CUDA kernels (needs CUDA torch + nvcc at build time; "
                "FASTPURIFY_WITH_CUDA=1, see `python -m fastpurify.info`)")
    if not torch.cuda.is_available():
        return "no CUDA device visible"
    return None


def triton_interpret() -> bool:
    """TRITON_INTERPRET=1: Triton kernels run in its interpreter on CPU tensors.  Read when fastpurify is imported,
    because @triton.jit decides at decoration time, so the variable must be set before Python starts."""
    return os.environ.get("TRITON_INTERPRET") == "1"


@lru_cache(maxsize=1)
def triton_error() -> str | None:
    """Why the Triton kernels cannot run here (None when they can)."""
    try:
        import triton  # noqa: F401
    except ImportError as e:
        return f"triton not importable ({e})"
    import torch

    if triton_interpret() or torch.cuda.is_available():
        return None
    return "no CUDA device (on the CPU set TRITON_INTERPRET=1 before starting Python to use the interpreter)"
