"""Loading of the compiled extension `fastpurify._C` — optional: importing fastpurify never fails without it."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def load_error() -> str | None:
    """None when `fastpurify._C` is loaded (its ops are in torch.ops.fastpurify), else why not and how to fix it."""
    try:
        from . import _C  # noqa: F401  (importing registers the TORCH_LIBRARY ops)
    except ImportError as e:
        return (f"fastpurify._C is not built ({e}); build it with "
                "`pip install --no-build-isolation -e .` (see README, 'Build')")
    return None


def build_info() -> str:
    """'cpu', 'cpu,cuda', … as compiled, plus ';openmp' when OpenMP was used; '' when not built."""
    if load_error():
        return ""
    import torch

    return torch.ops.fastpurify.build_info()


def has_cuda_kernels() -> bool:
    return "cuda" in build_info().split(";")[0].split(",")
