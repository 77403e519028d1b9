"""Backends and dispatch (docs/DESIGN.md decision 2).

Each (op, backend) pair is a `Backend` record declaring devices, dtypes, `available()` and `why_not(inputs)`.
Selection: the `backend=` argument, then FASTPURIFY_BACKEND (read at call time), then the device's priority list.
A forced backend that cannot run raises with every backend's reasons; an automatic choice falls back to torch.

On CUDA the automatic choice is the torch reference until benchmarks/gpu_check.py has passed on that kind of GPU:
the check calls `mark_gpu_verified`, which adds a record to a records file, and `cuda_priority` puts the backends a
matching record names first.  Records are read from the package's gpu_verified.json (package data, committed with
the results) and, when FASTPURIFY_GPU_VERIFIED names a file, from that file too; records are written to that file
when it is set (a read-only install, or a check that keeps everything in its output folder), else to the package's.
"""

from __future__ import annotations

import datetime
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable

import torch

BACKEND_NAMES = ("torch", "cpu", "triton", "cuda")
# Automatic choice, per device type.  The C++ op beats the eager torch chain on the CPU (benchmarks/); on CUDA see
# cuda_priority: the compiled backends, in VERIFIED_ORDER, only once verified on the GPU.
PRIORITY = {"cpu": ("cpu", "torch"), "cuda": ("torch",)}
VERIFIED_ORDER = ("cuda", "triton")
VERIFIED_PATH = Path(__file__).with_name("gpu_verified.json")  # the package's records
VERIFIED_ENV = "FASTPURIFY_GPU_VERIFIED"  # a records file of its own (read beside the package's; written instead)
NOT_VERIFIED = "cuda/triton kernels not yet verified on a GPU: run benchmarks/gpu_check.py"


@dataclass(frozen=True)
class Backend:
    op: str
    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    available: Callable[[], str | None]  # None when usable, else the reason it is not
    fns: dict = field(default_factory=dict)  # "fwd"/"bwd" → callables

    def why_not(self, device: torch.device, dtype: torch.dtype) -> str | None:
        reason = self.available()
        if reason:
            return reason
        if device.type not in self.devices:
            return f"device {device.type} not supported (supports {', '.join(self.devices)})"
        if dtype not in self.dtypes:
            return f"dtype {dtype} not supported (supports {', '.join(str(d) for d in self.dtypes)})"
        return None


_REGISTRY: dict[str, dict[str, Backend]] = {}


def register(backend: Backend) -> None:
    if backend.name not in BACKEND_NAMES:
        raise ValueError(f"unknown backend name {backend.name!r}")
    _REGISTRY.setdefault(backend.op, {})[backend.name] = backend


def backends_for(op: str) -> dict[str, Backend]:
    return dict(_REGISTRY.get(op, {}))


def _forced(backend: str | None) -> tuple[str | None, str]:
    if backend is not None:
        return backend, "backend= argument"
    env = os.environ.get("FASTPURIFY_BACKEND") or None
    return env, "FASTPURIFY_BACKEND"


def select(op: str, device: torch.device, dtype: torch.dtype, backend: str | None = None, describe: str = "") -> Backend:
    """The backend that runs `op` for inputs on `device` with `dtype`."""
    table = _REGISTRY.get(op, {})
    forced, source = _forced(backend)
    if forced is not None and forced not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {forced!r} ({source}); expected one of {', '.join(BACKEND_NAMES)}")
    if forced is not None:
        b = table.get(forced)
        if b is not None and b.why_not(device, dtype) is None:
            return b
        raise RuntimeError(_no_backend_message(op, table, device, dtype, describe, f"forced: {forced} ({source})"))
    order = cuda_priority(device)[0] if device.type == "cuda" else PRIORITY.get(device.type, ("torch",))
    for name in order:
        b = table.get(name)
        if b is not None and b.why_not(device, dtype) is None:
            return b
    # The torch reference declares every device; reaching here means the inputs themselves are unsupported.
    raise RuntimeError(_no_backend_message(op, table, device, dtype, describe, "automatic"))


def _no_backend_message(op, table, device, dtype, describe, how) -> str:
    lines = [f"no backend can run fastpurify.ops.{op}({describe or f'{device.type} {dtype}'}); {how}"]
    for name in BACKEND_NAMES:
        b = table.get(name)
        reason = "not implemented for this op" if b is None else (b.why_not(device, dtype) or "available")
        lines.append(f"  {name}: {reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- GPU verification
def _versions() -> tuple[str, str]:
    from .._version import __version__

    return __version__, torch.__version__


def _same_release(a: str, b: str) -> bool:
    """torch versions match on major.minor (2.11.0+cu128 ~ 2.11.1): Triton and the C++ ABI move with them."""
    return a.split("+")[0].split(".")[:2] == b.split("+")[0].split(".")[:2]


def verified_priority(gpu: str, capability: tuple[int, int], records: list[dict], fastpurify_version: str,
                      torch_version: str) -> tuple[tuple[str, ...], str]:
    """The automatic order on a CUDA device and why (a pure function of its inputs).  A record verifies a device
    when GPU name, compute capability, fastpurify version and torch major.minor all match; the compiled backends it
    names then come first (in VERIFIED_ORDER), the torch reference last."""
    cap = f"{capability[0]}.{capability[1]}"
    passed = set()
    for r in records:
        if (r.get("gpu") == gpu and r.get("capability") == cap and r.get("fastpurify") == fastpurify_version
                and _same_release(r.get("torch", ""), torch_version)):
            passed.update(r.get("backends", ()))
    first = tuple(b for b in VERIFIED_ORDER if b in passed)
    if not first:
        why = f"no record for {gpu}, sm {cap}, fastpurify {fastpurify_version}, torch {torch_version}"
        return ("torch",), f"{NOT_VERIFIED} ({why})"
    return first + ("torch",), f"verified on {gpu} (sm {cap}) by benchmarks/gpu_check.py"


def verified_path() -> Path:
    """Where mark_gpu_verified writes by default: $FASTPURIFY_GPU_VERIFIED when set, else the package's file."""
    env = os.environ.get(VERIFIED_ENV)
    return Path(env) if env else VERIFIED_PATH


def load_verified(path: Path | str | None = None) -> list[dict]:
    """The records of GPUs on which benchmarks/gpu_check.py passed ([] when none): those of `path`, or by default
    the package's file plus $FASTPURIFY_GPU_VERIFIED's (read at call time)."""
    if path is None:
        paths = [VERIFIED_PATH] + ([verified_path()] if verified_path() != VERIFIED_PATH else [])
        return [r for p in paths for r in load_verified(p)]
    p = Path(path)
    return json.loads(p.read_text())["records"] if p.exists() else []


@cache
def _cuda_priority(index: int) -> tuple[tuple[str, ...], str]:
    gpu, cap = torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
    return verified_priority(gpu, cap, load_verified(), *_versions())


def cuda_priority(device: torch.device | None = None) -> tuple[tuple[str, ...], str]:
    """(automatic order, reason) for a CUDA device (the current one by default)."""
    if not torch.cuda.is_available():
        return ("torch",), f"{NOT_VERIFIED} (no CUDA device visible here)"
    index = torch.cuda.current_device() if device is None or device.index is None else device.index
    return _cuda_priority(index)


def mark_gpu_verified(backends, *, index: int = 0, commit: str | None = None, path: Path | str | None = None,
                      gpu: str | None = None, capability: tuple[int, int] | None = None) -> dict:
    """Record that benchmarks/gpu_check.py passed for `backends` (e.g. ('cuda', 'triton')) on CUDA device `index`
    (or on the given gpu name and capability): from then on the automatic choice on that kind of GPU puts them first.
    Writes `path`, by default verified_path().  Replaces an earlier record of the same GPU, capability and versions
    in that file.  Returns the record."""
    path = verified_path() if path is None else path
    unknown = set(backends) - set(VERIFIED_ORDER)
    if unknown or not backends:
        raise ValueError(f"backends must be a non-empty subset of {VERIFIED_ORDER}, got {tuple(backends)}")
    if gpu is None or capability is None:
        gpu, capability = torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
    fp_version, torch_version = _versions()
    record = {"gpu": gpu, "capability": f"{capability[0]}.{capability[1]}", "fastpurify": fp_version,
              "torch": torch_version, "commit": commit, "date": datetime.date.today().isoformat(),
              "backends": [b for b in VERIFIED_ORDER if b in set(backends)]}
    key = ("gpu", "capability", "fastpurify", "torch")
    records = [r for r in load_verified(path) if tuple(r.get(k) for k in key) != tuple(record[k] for k in key)]
    Path(path).write_text(json.dumps({"records": records + [record]}, indent=2) + "\n")
    _cuda_priority.cache_clear()
    return record
