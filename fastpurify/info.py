"""`python -m fastpurify.info [--json]`: versions, build, device and which backend can run each op (and why not)."""

from __future__ import annotations

import argparse
import json
import platform


def available_backends() -> dict[str, dict]:
    """{backend: {'available': bool, 'reason': str | None, 'ops': [...]}} for torch, cpu (C++), triton, cuda."""
    from .ops import _ext  # importing fastpurify.ops registers every op × backend
    from .ops.registry import _REGISTRY

    reasons = {"torch": None, "cpu": _ext.load_error(), "triton": _ext.triton_error(), "cuda": _ext.cuda_error()}
    out = {}
    for name, reason in reasons.items():
        op_names = sorted(op for op, table in _REGISTRY.items() if name in table)
        if reason is None and not op_names:
            reason = "no ops implemented for this backend yet"
        out[name] = {"available": reason is None, "reason": reason, "ops": op_names}
    return out


def automatic_order() -> dict[str, dict]:
    """{device type: {'order': [...], 'reason': str}}: the automatic backend order (ops/registry.py) and why."""
    from .ops.registry import PRIORITY, cuda_priority

    order, reason = cuda_priority()
    return {"cpu": {"order": list(PRIORITY["cpu"]), "reason": "C++ kernels first (benchmarks/bench_ops.py)"},
            "cuda": {"order": list(order), "reason": reason}}


def cpu_isa() -> str | None:
    """The instruction set the C++ noise kernels run here (None without the extension)."""
    import torch

    from .ops import _ext

    return None if _ext.load_error() else torch.ops.fastpurify.cpu_isa()


def info() -> dict:
    import torch

    from . import __version__
    from .ops import _ext

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "fastpurify": __version__, "torch": torch.__version__, "triton": triton_version,
        "python": platform.python_version(), "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "extension_build": _ext.build_info() or None, "cpu_isa": cpu_isa(), "torch_threads": torch.get_num_threads(),
        "backends": available_backends(), "automatic": automatic_order(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastpurify.info", description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    d = info()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    for k, v in d.items():
        if k not in ("backends", "automatic"):
            print(f"{k:16s} {v}")
    print("backends:")
    for name, b in d["backends"].items():
        status = "available" if b["available"] else f"unavailable — {b['reason']}"
        print(f"  {name:7s} {status}; ops: {', '.join(b['ops']) or '-'}")
    print("automatic choice (backend= and FASTPURIFY_BACKEND override it):")
    for dev, a in d["automatic"].items():
        print(f"  {dev:7s} {' → '.join(a['order'])} — {a['reason']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
