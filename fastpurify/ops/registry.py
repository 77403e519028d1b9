"""Backends and dispatch (DESIGN.md decision 2, STYLE.md §2.3).

Each (op, backend) pair is a `Backend` record declaring devices, dtypes, `available()` and `why_not(inputs)`.
Selection: the `backend=` argument, then FASTPURIFY_BACKEND (read at call time), then the device's priority list.
A forced backend that cannot run raises with every backend's reasons; an automatic choice falls back to torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch

BACKEND_NAMES = ("torch", "cpu", "triton", "cuda")
# Automatic choice, per device type.  The C++ op beats the eager torch chain on the CPU (benchmarks/);
# GPU order is provisional until benchmarks/gpu_check.py has measured it.
PRIORITY = {"cpu": ("cpu", "torch"), "cuda": ("cuda", "triton", "torch")}


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
    for name in PRIORITY.get(device.type, ("torch",)):
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
