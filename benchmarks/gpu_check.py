"""The whole GPU check in one command: build, GPU tests, op and purification benchmarks, one JSON report.

    python benchmarks/gpu_check.py                   # on a GPU machine: ≤ 8 min in all, build included
    python benchmarks/gpu_check.py --skip-build --out /tmp/gpu-check
    python benchmarks/gpu_check.py --dry-run --out /tmp/dry   # the same steps at tiny sizes on the CPU (≈ 1 min)

Steps; each runs in its own subprocess under its own time limit (cut to what is left of the total), so a slow or
crashing step cannot eat the rest, and the report is rewritten after every step (a cut-short run keeps its results):
  build    `pip install --no-build-isolation --no-deps -e .` with FASTPURIFY_WITH_CUDA=1 (skipped when the installed
           fastpurify._C already has CUDA kernels, with --skip-build, without a GPU)
  tests    the GPU lane: tests/test_gpu_ops.py (every op × backend against the reference, fp32/fp16/bf16, gradcheck,
           capture of a step, no host syncs), tests/test_graphed.py (capture/replay of the whole purification and its
           backward, fresh noise per replay), tests/test_cuda_build.py (nvcc for sm_80/sm_90)
  copy     the device's memory bandwidth: a device-to-device copy in the same run
  ops      benchmarks/bench_ops.py → the fused step op's GB/s as a fraction of that bandwidth (target ≥ 85 %)
  ncsnpp   benchmarks/gpu_purify.py on NCSN++ CIFAR-10 (106.6 M, random weights): eager vs graphed vs compiled,
           fp32 vs bf16, batch 1/16/64/256, purify and the exact `full` gradient (target: graphed bf16 purify at batch
           64 ≥ 4× eager fp32)
  adm      the same on ADM-256 (552.8 M) at batch 1/8
  report   gpu_check.json: device, versions, each step's outcome and time, op GB/s, every purification row with its
           ratio to eager fp32, the UNet's MFU (FLOPs counted / spec-sheet peak and / a measured matmul), and the
           Lee & Kim protocol (512 images, PGD-200 × EOT-20, exact gradients) projected in GPU-hours
Output: benchmarks/results/<gpu-name>/ (or --out).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder: _meta.py
import _meta  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOTAL_S = 470  # the whole check, build included (the brief: ≤ 8 min)
# Nominal limit of each step (seconds); a step never gets more than what is left minus the floors of later steps.
LIMITS = {"build": 150, "tests": 100, "ops": 60, "ncsnpp": 150, "adm": 60}
FLOOR = 20  # seconds kept for each later step (and the report)
# Dense spec-sheet peaks (FLOP/s) for MFU; an unknown GPU gets only the measured-matmul ratio.
_HOPPER = {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}  # H100/H200 SXM (H200: same compute, more HBM)
PEAKS = {"H100": _HOPPER, "H200": _HOPPER, "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}}
# Spec-sheet HBM bandwidth (GB/s); the measured device-to-device copy is the achievable ceiling next to it.
HBM_GB_PER_S = {"H200": 4800, "H100 80GB HBM3": 3350, "H100": 3350, "A100": 2039}
LEE_KIM = dict(images=512, pgd_steps=200, eot=20, nfe=100)  # CIFAR-10 DiffPure, t* = 0.1: 100 steps per purification


def _run(cmd, limit, env=None, log=None) -> dict:
    """Run a step in a subprocess with a time limit; returns {'rc', 'seconds', 'timed_out', 'tail'}."""
    t0 = time.perf_counter()
    if limit <= 0:
        return {"cmd": " ".join(map(str, cmd)), "rc": None, "seconds": 0.0, "timed_out": True,
                "skip_reason": "no time left"}
    try:
        p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                           timeout=limit)
        rc, out, timed_out = p.returncode, p.stdout + p.stderr, False
    except subprocess.TimeoutExpired as e:
        rc, timed_out = None, True
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    if log is not None:
        log.write_text(out)
    return {"cmd": " ".join(map(str, cmd)), "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
            "timed_out": timed_out, "limit_s": round(limit, 1), "tail": out[-1500:]}


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


def _timed(fn, device, rounds: int) -> float:
    """Median seconds of fn() (CUDA events on a GPU)."""
    import torch

    for _ in range(2):
        fn()
    times = []
    for _ in range(rounds):
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _copy_bandwidth_gbps(device: str, nbytes: int) -> float:
    """Device-to-device copy: read + write of nbytes."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return 2 * nbytes / _timed(lambda: dst.copy_(src), device, 20) / 1e9


def _matmul_flops(device: str, n: int) -> dict:
    """Measured dense matmul FLOP/s per dtype: the achievable ceiling for the UNet's convolutions and matmuls."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
        out[name] = 2 * n ** 3 / _timed(lambda: a @ b, device, 10)
    return out


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


def _purify_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize_purify(rows: list[dict], gpu: str | None, matmul: dict) -> dict:
    """Ratios to eager fp32 (same model, batch, mode), MFU per row, and the Lee & Kim projection."""
    eager = {(r["model"], r["batch"], r["mode"]): r for r in rows
             if r.get("kind") == "row" and r["variant"] == "eager-fp32"}
    peaks = next((v for k, v in PEAKS.items() if gpu and k in gpu), None)
    table = []
    for r in rows:
        if r.get("kind") != "row":
            continue
        ref = eager.get((r["model"], r["batch"], r["mode"]))
        flops = ref and ref.get("flops_per_step")
        low = r["options"].get("precision") == "bf16"
        achieved = flops / r["s_per_step"] if flops else None
        spec = peaks and (peaks["bf16"] if low else peaks["tf32" if r.get("cudnn_tf32") else "fp32"])
        table.append(dict(model=r["model"], batch=r["batch"], mode=r["mode"], variant=r["variant"],
                          s_per_step=r["s_per_step"], images_per_s=r["images_per_s"],
                          ratio_vs_eager_fp32=ref and ref["s_per_call"] / r["s_per_call"],
                          first_call_s=r["first_call_s"], value_max_abs_diff=r.get("value_max_abs_diff"),
                          grad_rel_err=r.get("grad_rel_err"), peak_mem_gib=r.get("peak_mem_gib"),
                          tflop_per_s=achieved and achieved / 1e12, mfu_vs_spec=achieved and spec and achieved / spec,
                          mfu_vs_matmul=achieved and matmul.get("bf16" if low else "fp32") and
                          achieved / matmul["bf16" if low else "fp32"]))
    # Lee & Kim: every PGD step of every EOT draw is one exact full gradient through a 100-step purification.
    grads = [t for t in table if t["model"] == "ncsnpp" and t["mode"] == "full" and
             (t["grad_rel_err"] is None or t["grad_rel_err"] <= 5e-2)]
    best = max(grads, key=lambda t: t["batch"] / t["s_per_step"], default=None)
    projection = None
    if best:
        s_per_image = best["s_per_step"] * LEE_KIM["nfe"] / best["batch"]
        n = LEE_KIM["images"] * LEE_KIM["pgd_steps"] * LEE_KIM["eot"]
        projection = dict(**LEE_KIM, gradient_evaluations=n, from_row=f"{best['variant']} batch {best['batch']}",
                          s_per_image_gradient=s_per_image, gpu_hours=n * s_per_image / 3600, gpu=gpu,
                          note="measured per-step time × 100 steps; excludes the final re-evaluation (N forward "
                               "purifications per image, < 1 % of the attack's cost)")
    return {"rows": table, "lee_kim_projection": projection}


def mark_verified(gpu: str | None, out: Path) -> dict:
    """registry.mark_gpu_verified for the CUDA and Triton backends once the GPU lane passed.  On a GPU it writes the
    package's fastpurify/ops/gpu_verified.json (commit it with the results); a dry run writes a scratch copy in out/
    under a made-up device name, so the call itself is exercised on the CPU."""
    from fastpurify.ops.registry import mark_gpu_verified

    commit = _meta.commit()
    if gpu:
        return mark_gpu_verified(("cuda", "triton"), commit=commit)
    return mark_gpu_verified(("cuda", "triton"), commit=commit, path=out / "gpu_verified.json",
                             gpu="dry run (no GPU)", capability=(0, 0))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default benchmarks/results/<gpu>/)")
    ap.add_argument("--skip-build", action="store_true", help="use the installed fastpurify._C as it is")
    ap.add_argument("--skip", default="", help="comma list of steps to skip (tests, ops, ncsnpp, adm)")
    ap.add_argument("--dtypes", default="fp32,bf16", help="op benchmark dtypes (FASTPURIFY_BENCH_DTYPES)")
    ap.add_argument("--total", type=float, default=TOTAL_S, help="seconds for the whole check")
    ap.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU (script check)")
    args = ap.parse_args(argv)
    t_end = time.perf_counter() + args.total
    skip = set(filter(None, args.skip.split(",")))

    import torch  # fastpurify itself is imported only by subprocesses, after the build

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.dry_run else None
    device = "cuda" if gpu else "cpu"
    out = args.out or (ROOT / "benchmarks" / "results" / _slug(gpu) if gpu else Path(tempfile.mkdtemp("-gpu-check")))
    out.mkdir(parents=True, exist_ok=True)
    report = {"gpu": gpu, "dry_run": args.dry_run, "host": platform.node(), "python": platform.python_version(),
              "torch": torch.__version__, "torch_cuda": torch.version.cuda, "steps": {}}
    if gpu:
        props = torch.cuda.get_device_properties(0)
        report.update(gpu_memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}",
                      sm_count=props.multi_processor_count)
    print(f"gpu_check: {gpu or 'no GPU (CPU: tiny sizes, a script check)'} → {out}", flush=True)

    def save():
        report["total_seconds"] = round(args.total - (t_end - time.perf_counter()), 1)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))

    def limit(step: str, later: int) -> float:
        return min(LIMITS[step], t_end - time.perf_counter() - FLOOR * (later + 1))

    def section(name: str, fn):
        """An in-process section: its result, or its error recorded in report['errors'] (the rest goes on)."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - every failure is recorded, none loses the report
            report.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:2000]
            print(f"  {name}: ERROR {type(e).__name__}: {e}", flush=True)
            return None
        finally:
            save()

    def step(name: str, later: int, cmd, env=None) -> dict:
        r = report["steps"][name] = _run(cmd, limit(name, later), env, out / f"{name}.log")
        save()
        print(f"  {name:7s} {'TIMED OUT' if r['timed_out'] else 'rc=' + str(r['rc'])} ({r['seconds']} s)", flush=True)
        return r

    # 1. build
    if gpu and not args.skip_build and not _has_cuda_build():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", "."]
        step("build", 5, cmd, {"FASTPURIFY_WITH_CUDA": "1"})
    else:
        report["steps"]["build"] = {"skip_reason": "--skip-build" if args.skip_build else
                                    ("no GPU" if not gpu else "installed _C already has CUDA kernels")}
    report["fastpurify_info"] = section("info", _info)

    # 2. tests (the GPU lane; in a dry run: the CPU static-buffer tests of the same file, as a script check)
    if "tests" not in skip:
        xml = out / "tests.xml"
        files = ["tests/test_gpu_ops.py", "tests/test_graphed.py", "tests/test_cuda_build.py"]
        marks = ["-m", "gpu or not slow"] if gpu else ["-m", "not gpu and not slow", "-k", "bit_for_bit and ddim"]
        cmd = [sys.executable, "-m", "pytest", "-q", *marks, *(files if gpu else files[1:2]), f"--junitxml={xml}",
               "-p", "no:cacheprovider"]
        r = step("tests", 4, cmd)
        r.update(_junit(xml))
        passed = r["rc"] == 0 and not r["timed_out"] and r.get("tests", 0) > r.get("skipped", 0)
        report["gpu_tests_passed"] = bool(gpu) and passed
        # Passed on a GPU (test_gpu_backends_are_available requires both kernel backends): from now on the automatic
        # choice on this kind of GPU puts them first (fastpurify/ops/gpu_verified.json; commit it with the results).
        # A dry run goes through the same call on a scratch file in the output folder.
        if passed:
            report["gpu_verified"] = section("gpu_verified", lambda: mark_verified(gpu, out))
        save()

    # 3. copy bandwidth and matmul rate (in this process: seconds)
    copy = section("copy", lambda: _copy_bandwidth_gbps(device, (1 << 30) if gpu else (1 << 24)))
    report["copy_gb_per_s"] = copy and round(copy, 1)
    report["matmul_flop_per_s"] = section("matmul", lambda: _matmul_flops(device, 8192 if gpu else 256)) or {}

    # 4. op benchmarks: the fused step op against the copy bandwidth
    if "ops" not in skip:
        bench_json = out / "bench_ops.json"
        sel = [] if gpu else ["-k", "sampler_step and torch and 64x3x32x32"]
        cmd = [sys.executable, "-m", "pytest", "-q", "benchmarks/bench_ops.py", *sel, "--benchmark-enable",
               f"--benchmark-json={bench_json}", "-p", "no:cacheprovider"]
        step("ops", 3, cmd, {"FASTPURIFY_BENCH_DEVICE": device, "FASTPURIFY_BENCH_DTYPES": args.dtypes if gpu else
                             "fp32", "FASTPURIFY_BENCH_THREADS": "" if gpu else "1"})
        report["benchmarks"] = section("ops_rows", lambda: _bench_rows(bench_json, report["copy_gb_per_s"])) or []
        steps = [r for r in report["benchmarks"] if r["op"] == "sampler_step" and r["provider"] != "torch"]
        report["step_op_best_pct_of_copy"] = max((r["pct_of_copy"] or 0 for r in steps), default=None)
        hbm = next((v for k, v in HBM_GB_PER_S.items() if gpu and k in gpu), None)
        best = max((r["gb_per_s"] for r in steps), default=None)
        report["step_op_best_pct_of_spec_hbm"] = hbm and best and round(100 * best / hbm, 1)
        save()

    # 5–6. purification matrices (each child appends one JSON line per configuration)
    rows_path = out / "purify_rows.jsonl"
    for i, model in enumerate(("ncsnpp", "adm")):
        if model in skip:
            continue
        budget = limit(model, 1 - i)
        cmd = [sys.executable, "benchmarks/gpu_purify.py", "--model", model, "--out", str(rows_path),
               "--budget", str(max(budget - 15, 1))] + (["--dry-run"] if not gpu else [])
        step(model, 1 - i, cmd)
        report["purify"] = section("summary", lambda: summarize_purify(_purify_rows(rows_path), gpu,
                                                                       report["matmul_flop_per_s"]))

    # 7. report
    runs = [s for s in report["steps"].values() if "rc" in s]
    report["ok"] = all(s["rc"] == 0 and not s["timed_out"] for s in runs) and not report.get("errors")
    save()
    _print_summary(report, out)
    return 0 if report["ok"] else 1


def _print_summary(report: dict, out: Path) -> None:
    print(f"  copy   {report['copy_gb_per_s']} GB/s; step op best {report.get('step_op_best_pct_of_copy')} % of it, "
          f"{report.get('step_op_best_pct_of_spec_hbm')} % of the spec HBM bandwidth")
    for name, err in (report.get("errors") or {}).items():
        print(f"  ERROR in {name}: {err[:300]}")
    purify = report.get("purify") or {}
    for r in purify.get("rows", []):
        ratio = r["ratio_vs_eager_fp32"]
        print(f"  {r['model']:6s} b{r['batch']:<4d} {r['mode']:6s} {r['variant']:22s} {r['images_per_s']:9.2f} img/s "
              f"x{ratio or 0:5.2f} vs eager fp32  MFU {100 * (r['mfu_vs_spec'] or 0):5.1f} % (spec)")
    lk = purify.get("lee_kim_projection")
    if lk:
        print(f"  Lee & Kim (512 × PGD-200 × EOT-20, exact): {lk['gpu_hours']:.1f} GPU-hours ({lk['from_row']})")
    print(f"gpu_check: {'ok' if report['ok'] else 'FAILED'} in {report['total_seconds']} s; "
          f"report {out / 'gpu_check.json'}")


if __name__ == "__main__":
    raise SystemExit(main())
