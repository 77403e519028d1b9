"""Versions, the build step (`gpu_check.py --internal build`) and the SASS counts."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _meta  # benchmarks/ is on sys.path (gpu_check.py puts it there)

from .plan import ROOT, _pythonpath


# ---------------------------------------------------------------------------------------------- versions
def _cmd_version(cmd: list[str], pattern: str | None = None) -> str | None:
    exe = shutil.which(cmd[0])
    if exe is None:
        return None
    try:
        p = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"error: {e}"
    text = (p.stdout + p.stderr).strip()
    if pattern:
        m = re.search(pattern, text)
        return m.group(0) if m else text.splitlines()[-1] if text else None
    return text.splitlines()[0] if text else None


def versions(gpu: bool) -> dict:
    """Every version the results depend on: Python, torch, CUDA, cuDNN, Triton, driver, GPU, nvcc, gcc, ninja."""
    import torch

    spec = importlib.util.spec_from_file_location("_fp_version", ROOT / "fastpurify" / "_version.py")
    ver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ver)
    v = {"python": platform.python_version(), "python_executable": sys.executable, "platform": platform.platform(),
         "host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
         "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
         "triton": _module_version("triton"), "numpy": _module_version("numpy"),
         "fastpurify": ver.__version__, "code_fingerprint": ver.code_fingerprint(), "commit": _meta.commit(),
         "nvcc": _cmd_version(["nvcc", "--version"], r"release [0-9.]+, V[0-9.]+"),
         "gcc": _cmd_version(["gcc", "--version"]), "ninja": _cmd_version(["ninja", "--version"]),
         "pytest_xdist": _module_version("xdist"),
         "env": {k: v for k, v in os.environ.items() if k.startswith(("FASTPURIFY_", "CUDA_", "TORCH_", "TRITON_"))}}
    smi = _cmd_version(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,memory.total,"
                        "power.limit", "--format=csv,noheader"])
    if smi and not smi.startswith("error"):
        keys = ("name", "driver", "max_sm_clock", "max_mem_clock", "memory", "power_limit")
        v["nvidia_smi"] = dict(zip(keys, (x.strip() for x in smi.split(","))))
    if gpu:
        props = torch.cuda.get_device_properties(0)
        v.update(gpu=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                 sm_count=props.multi_processor_count, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                 sm_clock_mhz=getattr(props, "clock_rate", 0) / 1e3 or None,
                 driver_cuda=_driver_cuda())
    return v


def _module_version(name: str) -> str | None:
    if importlib.util.find_spec(name) is None:
        return None
    try:
        from importlib.metadata import version

        return version({"xdist": "pytest-xdist"}.get(name, name))
    except Exception:  # noqa: BLE001 - a version is informational
        return "installed"


def _driver_cuda() -> str | None:
    try:
        import ctypes

        n = ctypes.c_int()
        ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(n))
        return f"{n.value // 1000}.{n.value % 1000 // 10}"
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------- internal steps
def internal_build(out_rows: Path, dry: bool) -> int:
    """The build step's process: build (or, in a dry run, compile one .cu with the same arch flags), then record
    what fastpurify.info sees.  Runs as `gpu_check.py --internal build`."""
    env = dict(os.environ)
    row = {"kind": "build", "dry_run": dry}
    if not dry and _probe_cuda_kernels(env):
        row.update(ok=True, skipped="fastpurify._C with CUDA kernels is already built here")
        dry_skip = True
    else:
        dry_skip = False
    nvcc = shutil.which("nvcc") or (os.environ.get("CUDA_HOME") and shutil.which(
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")))
    archs = os.environ.get("FASTPURIFY_CUDA_ARCHS", "80;90").split(";")
    if dry:
        if not nvcc:
            row.update(ok=None, reason="no nvcc on this machine: nothing to compile in the dry run")
        else:
            _dry_compile(nvcc, archs, row)
    elif dry_skip:
        print(row["skipped"], flush=True)
    elif not nvcc:
        row.update(ok=False, reason="no nvcc (PATH, CUDA_HOME): the CUDA kernels cannot be built here; the C++ ops "
                                    "are built without them and only the Triton backend can be verified")
        env["FASTPURIFY_WITH_CUDA"] = "0"
    if not dry and not dry_skip:
        _build_ext(env, row)
    _add_info(row)
    _meta.append_jsonl(out_rows, row)
    print(json.dumps({k: v for k, v in row.items() if k != "info"}), flush=True)
    if _meta.hang_after() is not None:
        _meta.hang("build", out_rows)
    return 0 if row.get("ok") is not False else 1


def _dry_compile(nvcc: str, archs: list[str], row: dict) -> None:
    """The dry run's stand-in for the build: one .cu object with the build's arch flags."""
    flags = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs] + \
            [f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-c", "-O3", "-std=c++20", *flags, str(ROOT / "csrc/cuda/noise.cu"), "-o",
               os.path.join(tmp, "noise.o")]
        print("dry run: one .cu object instead of the extension:", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        print(p.stdout, flush=True)
        row.update(ok=p.returncode == 0, seconds=time.perf_counter() - t0, cmd=" ".join(cmd),
                   warnings=p.stdout.lower().count("warning"))


def _build_ext(env: dict, row: dict) -> None:
    """`setup.py build_ext --inplace`, streamed, warnings counted."""
    env.setdefault("FASTPURIFY_WITH_CUDA", "1")
    env.setdefault("MAX_JOBS", str(os.cpu_count() or 4))
    cmd = [sys.executable, "setup.py", "build_ext", "--inplace"]
    print("build:", " ".join(cmd), {k: env[k] for k in ("FASTPURIFY_WITH_CUDA", "MAX_JOBS")}, flush=True)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    warnings = 0
    for line in p.stdout:
        print(line, end="", flush=True)
        warnings += "warning" in line.lower()
    rc = p.wait()
    row.update(ok=rc == 0 and row.get("ok") is not False, rc=rc, seconds=time.perf_counter() - t0,
               warnings=warnings, cmd=" ".join(cmd))


def _add_info(row: dict) -> None:
    """What fastpurify.info sees after the build; the SASS counts when CUDA kernels were built."""
    info = subprocess.run([sys.executable, "-m", "fastpurify.info", "--json"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
    try:
        row["info"] = json.loads(info.stdout)
    except json.JSONDecodeError:
        row["info_error"] = (info.stdout + info.stderr)[-1500:]
    build = (row.get("info") or {}).get("extension_build", "")
    row["cuda_kernels"] = "cuda" in build.split(";")[0].split(",")
    if row["cuda_kernels"]:
        row["sass"] = sass_counts()


# Kernels whose sm_90 machine code is counted (the noise's cost: see benchmarks/bench_ops.py): the normals alone
# (vectorised) and the fp32 noisy, clamped, unguided step.
SASS_KERNELS = {"normal_kernel": "normal_kernelILb1E", "sampler_step_fwd_f32": "sampler_step_fwd_kernelIfLb1ELb1ELb0E"}


def _cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    for root in filter(None, (os.environ.get("CUDA_HOME"), "/usr/local/cuda")):
        if os.path.exists(os.path.join(root, "bin", "cuobjdump")):
            return os.path.join(root, "bin", "cuobjdump")
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "backends", "nvidia", "bin", "cuobjdump")
        if os.path.exists(path):
            return path
    return None


def sass_counts(so: Path | None = None) -> dict:
    """Static instruction counts of SASS_KERNELS in the sm_90 code of fastpurify._C (cuobjdump --dump-sass): the
    noisy kernels' size, to set beside PHILOX_INSTR_PER_4.  Static: cosf's slow range reduction (never taken for
    2π·u2 in [0, 2π)) and the grid-stride loop are counted, so the fast path per 4 elements is smaller."""
    tool = _cuobjdump()
    so = so or next(iter(sorted((ROOT / "fastpurify").glob("_C*.so"))), None)
    if tool is None or so is None:
        return {"error": "no cuobjdump" if tool is None else "no fastpurify/_C*.so"}
    p = subprocess.run([tool, "--dump-sass", "--gpu-architecture", "sm_90", str(so)], capture_output=True,
                       text=True, timeout=120)
    counts, current = {}, None
    for line in p.stdout.splitlines():
        if "Function :" in line:
            current = next((k for k, v in SASS_KERNELS.items() if v in line), None)
            if current:
                counts[current] = 0
        elif current and re.match(r"\s+/\*[0-9a-f]{4,}\*/\s", line):
            counts[current] += 1
    return counts or {"error": (p.stdout + p.stderr)[-300:]}


def _probe_cuda_kernels(env: dict) -> bool:
    code = "from fastpurify.ops import _ext; print(_ext.has_cuda_kernels())"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    return p.stdout.strip() == "True"
