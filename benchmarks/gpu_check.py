"""The whole GPU check in one go: build with CUDA, GPU tests, op benchmarks, JSON report.

    python benchmarks/gpu_check.py                  # on a GPU machine; ≈ 3–6 min, hard limit well under 8
    python benchmarks/gpu_check.py --skip-build --out /tmp/gpu-check

Steps, each timed and each with its own time limit (a step that runs over is recorded as such and the rest go on):
  1. build   `pip install --no-build-isolation --no-deps -e .` with FASTPURIFY_WITH_CUDA=1 (skipped when the installed
             fastpurify._C already carries CUDA kernels, or with --skip-build)
  2. tests   tests/test_gpu_ops.py (-m gpu: compiled Triton and CUDA vs the reference, fp32/fp16/bf16, graph capture,
             no host syncs) and tests/test_cuda_build.py (nvcc for sm_80/sm_90)
  3. copy    the device's memory bandwidth, measured by a plain device-to-device copy in the same run
  4. bench   benchmarks/bench_ops.py on the GPU → bench_ops.json (pytest-benchmark)
  5. report  gpu_check.json: device, versions, each step's time and outcome, copy GB/s, and per op × backend × shape
             × dtype the median, GB/s, % of the copy bandwidth and the speed-up over the eager torch reference
Output: benchmarks/results/<gpu-name>/ (or --out).  Without a GPU only the CPU-safe parts run (environment, nvcc
compile test) and the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {"build": 180, "tests": 150, "bench": 150}  # seconds; worst case ≈ 8 min minus margin


def _run(cmd, limit, env=None, log=None) -> dict:
    """Run a step in a subprocess with a time limit; returns {'rc', 'seconds', 'timed_out', 'tail'}."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                           timeout=limit)
        rc, out, timed_out = p.returncode, p.stdout + p.stderr, False
    except subprocess.TimeoutExpired as e:
        rc, timed_out = None, True
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    if log is not None:
        log.write_text(out)
    return {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t0, 1), "timed_out": timed_out,
            "tail": out[-1500:]}


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _info() -> dict:
    p = subprocess.run([sys.executable, "-m", "fastpurify.info", "--json"], cwd=ROOT, capture_output=True, text=True)
    try:
        return json.loads(p.stdout)
    except json.JSONDecodeError:
        return {"error": (p.stdout + p.stderr)[-1500:]}


def _has_cuda_build() -> bool:
    code = "from fastpurify.ops import _ext; print(_ext.has_cuda_kernels())"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    return p.stdout.strip() == "True"


def _junit(path: Path) -> dict:
    if not path.exists():
        return {}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def _copy_bandwidth_gbps(nbytes: int = 1 << 30, rounds: int = 20) -> float:
    """Device-to-device copy: read + write of nbytes, median over rounds (CUDA events)."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    times.sort()
    return 2 * nbytes / times[len(times) // 2] / 1e9


def _bench_rows(path: Path, copy_gbps: float | None) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for b in json.loads(path.read_text())["benchmarks"]:
        e = b.get("extra_info", {})
        if "op" not in e:
            continue
        rows.append({"op": e["op"], "provider": e["provider"], "shape": e["shape"], "dtype": e["dtype"],
                     "median_s": b["stats"]["median"], "gb_per_s": round(e["gb_per_s"], 2),
                     "pct_of_copy": round(100 * e["gb_per_s"] / copy_gbps, 1) if copy_gbps else None,
                     "ratio_vs_torch": round(e["ratio_vs_torch"], 2),
                     "ratio_vs_eager_randn": e.get("ratio_vs_eager_randn") and round(e["ratio_vs_eager_randn"], 2)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/<gpu>/)")
    ap.add_argument("--skip-build", action="store_true", help="use the installed fastpurify._C as it is")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--dtypes", default="fp32,bf16", help="benchmark dtypes (FASTPURIFY_BENCH_DTYPES)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    import torch  # fastpurify itself is imported only by subprocesses, after the build

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out = args.out or (ROOT / "benchmarks" / "results" / _slug(gpu) if gpu else Path(tempfile.mkdtemp("-gpu-check")))
    out.mkdir(parents=True, exist_ok=True)
    report = {"gpu": gpu, "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
              "torch_cuda": torch.version.cuda, "steps": {}}
    if gpu:
        props = torch.cuda.get_device_properties(0)
        report.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                      sm_count=props.multi_processor_count)
    print(f"gpu_check: {gpu or 'no GPU: CPU-safe parts only'} → {out}", flush=True)

    # 1. build
    if gpu and not args.skip_build and not _has_cuda_build():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", "."]
        report["steps"]["build"] = _run(cmd, LIMITS["build"], {"FASTPURIFY_WITH_CUDA": "1"}, out / "build.log")
    else:
        report["steps"]["build"] = {"skip_reason": "--skip-build" if args.skip_build else
                                    ("no GPU" if not gpu else "installed _C already has CUDA kernels")}
    report["fastpurify_info"] = _info()

    # 2. tests (without a GPU the gpu-marked tests skip themselves; the nvcc compile test still runs)
    if not args.skip_tests:
        xml = out / "tests.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu or not slow", "tests/test_gpu_ops.py",
               "tests/test_cuda_build.py", f"--junitxml={xml}", "-p", "no:cacheprovider"]
        step = _run(cmd, LIMITS["tests"], log=out / "tests.log")
        step.update(_junit(xml))
        report["steps"]["tests"] = step
        # Passed on a GPU (test_gpu_backends_are_available requires both kernel backends): from now on the automatic
        # choice on this kind of GPU puts them first (fastpurify/ops/gpu_verified.json; commit it with the results).
        if gpu and step["rc"] == 0 and step.get("tests", 0) > step.get("skipped", 0):
            from fastpurify.ops.registry import mark_gpu_verified

            commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                    text=True, check=False).stdout.strip() or None
            report["gpu_verified"] = mark_gpu_verified(("cuda", "triton"), commit=commit)

    # 3. copy bandwidth and 4. benchmarks
    copy = None
    if gpu:
        copy = _copy_bandwidth_gbps()
        report["copy_gb_per_s"] = round(copy, 1)
    if gpu and not args.skip_bench:
        bench_json = out / "bench_ops.json"
        cmd = [sys.executable, "-m", "pytest", "-q", "benchmarks/bench_ops.py", "--benchmark-enable",
               f"--benchmark-json={bench_json}", "-p", "no:cacheprovider"]
        report["steps"]["bench"] = _run(cmd, LIMITS["bench"], {"FASTPURIFY_BENCH_DEVICE": "cuda",
                                                               "FASTPURIFY_BENCH_DTYPES": args.dtypes},
                                        out / "bench.log")
        report["benchmarks"] = _bench_rows(bench_json, copy)

    # 5. report
    report["total_seconds"] = round(time.perf_counter() - t_start, 1)
    ok = all(s.get("rc") in (0, None) and not s.get("timed_out") for s in report["steps"].values() if "rc" in s)
    report["ok"] = ok
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    for name, s in report["steps"].items():
        status = s.get("skip_reason") or ("TIMED OUT" if s.get("timed_out") else f"rc={s['rc']}")
        extra = f", {s['tests']} tests, {s['failures']} failed, {s['skipped']} skipped" if "tests" in s else ""
        print(f"  {name:6s} {status} ({s.get('seconds', 0)} s{extra})")
    if copy:
        print(f"  copy   {copy:.0f} GB/s")
    for r in report.get("benchmarks", []):
        if r["provider"] != "torch":
            shape = "x".join(map(str, r["shape"]))
            print(f"  {r['op']:20s} {r['provider']:7s} {shape:14s} {r['dtype']:9s} {r['gb_per_s']:8.1f} GB/s  "
                  f"{r['pct_of_copy'] or 0:5.1f}% of copy  {r['ratio_vs_torch']:7.1f}x torch")
    print(f"gpu_check: {'ok' if ok else 'FAILED'} in {report['total_seconds']} s; report {out / 'gpu_check.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
