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
    """The instruction set the C++ CPU kernels (noise and element-wise loops) run here: the widest this CPU has, capped
    by FASTPURIFY_CPU_ISA=baseline|avx2|avx512 (None without the extension)."""
    import torch

    from .ops import _ext

    return None if _ext.load_error() else torch.ops.fastpurify.cpu_isa()


def speed_options() -> dict[str, str]:
    """What Purifier(compile=, graphs=, grad_memory=) do on this machine (precision: see precision_table)."""
    import shutil

    import torch

    from .models.fast import COMPILE_BACKEND
    from .samplers.graphed import graph_obstacle

    cxx = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return {
        "compile": f"torch.compile({COMPILE_BACKEND}, static shapes, fullgraph) of the network; "
                   + (f"CPU code generation with {cxx}" if cxx else "no C++ compiler found: inductor cannot build CPU "
                      "kernels here"),
        "channels_last": "NHWC input and activations of the network",
        "graphs": graph_obstacle(dev, False, "full", capture=True) or f"CUDA-graph capture on {dev}",
        "grad_memory": "grad='full' keeps the activations of the steps that fit in the given bytes (no recompute "
                       "for those: same gradient, one network forward fewer per kept step)",
    }


def info() -> dict:
    import torch

    from ._version import __version__
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
        "extension_build": _ext.build_info() or None, "cpu_isa": cpu_isa(),
        # torch's own CPU kernels (ATen) pick theirs apart: 'AVX512', 'AVX2', 'DEFAULT', … (ATEN_CPU_CAPABILITY caps it)
        "torch_cpu_isa": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
        "backends": available_backends(), "automatic": automatic_order(), "precision": precision_table(),
        "speed_options": speed_options(),
    }


def precision_table() -> dict[str, dict[str, str]]:
    """{device: {precision: 'native' | 'emulated (why)' | 'unsupported: why'}} for Purifier(precision=...)."""
    import torch

    from .models.fast import PRECISIONS, precision_support

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    out = {}
    for dev in devices:
        row = {}
        for p in PRECISIONS:
            try:
                row[p] = precision_support(p, dev)
            except ValueError as e:
                row[p] = f"unsupported: {e}"
        out[dev.type] = row
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastpurify.info", description=__doc__)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    args = p.parse_args(argv)
    d = info()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    for k, v in d.items():
        if k not in ("backends", "automatic", "precision", "speed_options"):
            print(f"{k:16s} {v}")
    print("backends:")
    for name, b in d["backends"].items():
        status = "available" if b["available"] else f"unavailable — {b['reason']}"
        print(f"  {name:7s} {status}; ops: {', '.join(b['ops']) or '-'}")
    print("automatic choice (backend= and FASTPURIFY_BACKEND override it):")
    for dev, a in d["automatic"].items():
        print(f"  {dev:7s} {' → '.join(a['order'])} — {a['reason']}")
    print("precision (Purifier(precision=...)):")
    for dev, row in d["precision"].items():
        for p, how in row.items():
            print(f"  {dev:5s} {p:5s} {how}")
    print("speed options (Purifier(...), README 'Performance'):")
    for name, how in d["speed_options"].items():
        print(f"  {name:13s} {how}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
