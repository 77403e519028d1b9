"""The CUDA kernels compile for sm_80 and sm_90 wherever a CUDA toolkit is installed, GPU or not (docs/DESIGN.md decision 6),
and the default build of fastpurify._C carries them.  Running them is the GPU lane's job (tests/test_gpu_ops.py)."""

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from fastpurify.ops import _ext

ROOT = Path(__file__).resolve().parents[1]
CUDA_SOURCES = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))


def _nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


NVCC = _nvcc()
# Mirrors setup.py's nvcc flags, plus the half/bfloat16 defines torch.utils.cpp_extension adds to every .cu.
FLAGS = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-Xcompiler", "-Wall", "--resource-usage",
         "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
         "-D__CUDA_NO_HALF2_OPERATORS__", "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90,code=sm_90",
         "-gencode=arch=compute_90,code=compute_90"]  # setup.py also embeds PTX of the newest arch


@pytest.mark.skipif(NVCC is None, reason="no nvcc (CUDA toolkit) on this machine")
def test_cuda_sources_compile_for_sm80_and_sm90(tmp_path):
    assert CUDA_SOURCES, "csrc/cuda/*.cu missing"
    # The .cu files include no torch headers, so each compiles in seconds; both run at once.
    procs = [(src, tmp_path / (src.stem + ".o"), subprocess.Popen(
        [NVCC, "-c", *FLAGS, str(src), "-o", str(tmp_path / (src.stem + ".o"))], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)) for src in CUDA_SOURCES]
    for src, obj, p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, f"nvcc failed on {src.name}:\n{out[-4000:]}"
        if "warning" in out.lower():  # reported, not a failure: another host compiler may warn where ours does not
            warnings.warn(f"nvcc warnings on {src.name}:\n{out[-4000:]}", stacklevel=1)
        # Memory-bound kernels must not spill registers to local memory on either architecture.
        spills = re.findall(r"(\d+) bytes spill stores", out)
        assert spills and all(s == "0" for s in spills), f"register spills in {src.name}"
        data = obj.read_bytes()
        assert b"sm_80" in data and b"sm_90" in data, f"{obj.name} lacks sm_80/sm_90 code"


@pytest.mark.skipif(NVCC is None or torch.version.cuda is None, reason="needs CUDA torch and nvcc")
@pytest.mark.skipif(os.environ.get("FASTPURIFY_WITH_CUDA") == "0", reason="CUDA kernels switched off for this build")
def test_default_build_carries_the_cuda_kernels():
    """With CUDA torch and a toolkit, `pip install -e .` builds csrc/cuda too (bindings.cpp included) and the CUDA
    kernels register under torch.ops.fastpurify, even on a machine without a GPU."""
    assert _ext.load_error() is None, _ext.load_error()
    assert _ext.has_cuda_kernels(), f"fastpurify._C built without CUDA: {_ext.build_info()!r} (reinstall)"
    for op in ("forward_diffuse", "forward_diffuse_bwd", "sampler_step", "sampler_step_bwd", "guidance_accumulate",
               "guidance_accumulate_bwd", "normal", "philox_bits"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastpurify::{op}", "CUDA"), op
