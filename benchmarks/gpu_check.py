"""The first GPU hour in one prepared command: build, verify the kernels, measure, and bring everything back in one
folder (docs/GPU_CHECK.md).

    timeout 330 python benchmarks/gpu_check.py --out OUTDIR        # on the GPU machine: ≤ 5 min, build included
    python benchmarks/gpu_check.py --dry-run --out /tmp/dry          # every step at tiny sizes on the CPU
    python benchmarks/gpu_check.py --dry-run --out /tmp/dry --simulate-timeout all   # …each step killed mid-way

The plan (PLAN; printed with its budgets at the start), in order of value.  Each step runs in its own process group
(start_new_session) under a deadline: step i must end by start + the sum of the budgets of steps 1..i, so time a step
does not use flows on to the next ones and a slow step cannot eat the budget of those after it.  A step that runs
past its deadline is killed with its whole process group (os.killpg: compilers and workers included) and keeps its
partial results: every step appends its results to rows.jsonl one line at a time (flushed, fsynced) and streams its
output to gpu_check.log.
  build       fastpurify._C against this machine's torch, CUDA and compiler (`setup.py build_ext --inplace`, CUDA
              on, sm_80/sm_90 machine code + compute_90 PTX, MAX_JOBS = CPUs); skipped when a build with CUDA
              kernels is already there; without nvcc the report says so and only Triton can be verified
  optests     VERIFICATION: tests/test_gpu_ops.py -v -m gpu (every op × backend against the reference), streamed,
              each test under its own time limit, FASTPURIFY_AUTOTUNE=1 (one Triton config: one compile per kernel);
              a backend is recorded as verified when every test naming it and every backend-independent test passed
  roofline    device-to-device copy bandwidth (1 GiB) and dense matmul rates (fp32, tf32, bf16): the ceilings
  ops         benchmarks/bench_ops.py: every fused op at 256 MiB per tensor with CUDA events, cuda and triton against
              the torch reference, the σ = 0 step (target ≥ 85 % of copy) apart from the noisy one (against the
              noise's arithmetic bound), one JSON line per case; this step and the next ones autotune Triton over
              two configs (FASTPURIFY_AUTOTUNE=2)
  ncsnpp      benchmarks/gpu_purify.py --plan ncsnpp: NCSN++ CIFAR-10 (106.6 M), eager vs graphed, fp32 vs bf16,
              purify and the exact `full` gradient, our kernels (backend cuda/triton) beside the reference (torch)
  adm         the same on ADM-256 (552.8 M), small batches
  graphtests  tests/test_graphed.py -m gpu: capture and replay of whole purifications against eager (a separate,
              reported step: verification does not rest on it)
  compiled    NCSN++ with torch.compile (inductor) under its own budget, last: a slow compile eats nothing else
The output folder holds at most 8 files, all also in one archive at the end: gpu_check.json (the report: plan,
versions — Python, torch, CUDA, cuDNN, Triton, driver, GPU, nvcc, gcc —, each step's outcome, time and log tail,
test outcomes, verification, op and purification summaries), gpu_check.log, rows.jsonl, gpu_verified.json (the
verification record; FASTPURIFY_GPU_VERIFIED=path writes it there instead, e.g. for a read-only install) and
gpu_check.tar.gz.  SIGTERM (`timeout`) kills the running step's group and still writes the report and the archive.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder: _meta.py
import _meta  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class Step(NamedTuple):
    name: str
    budget_s: float  # on a GPU
    dry_s: float  # in a --dry-run on the CPU
    what: str


PLAN = (
    Step("build", 60, 60, "fastpurify._C (C++ + CUDA: sm_80, sm_90, compute_90 PTX) against this torch"),
    Step("optests", 70, 60, "verification: tests/test_gpu_ops.py -v, one Triton config, a limit per test"),
    Step("roofline", 10, 30, "device-to-device copy (1 GiB) and matmul fp32 / tf32 / bf16"),
    Step("ops", 35, 40, "fused ops at 256 MiB per tensor, cuda / triton vs torch, σ = 0 apart; JSONL per case"),
    Step("ncsnpp", 50, 90, "NCSN++ 106.6 M: eager vs graphed, fp32 vs bf16, purify and full, ours vs reference"),
    Step("adm", 20, 60, "ADM-256 552.8 M: eager vs graphed bf16, batch 1 and 4"),
    Step("graphtests", 25, 60, "tests/test_graphed.py -m gpu: captured purification vs eager (reported apart)"),
    Step("compiled", 25, 90, "NCSN++ torch.compile (inductor) bf16, eager and graphed: last, own budget"),
)
STEPS = tuple(s.name for s in PLAN)
FILES = ("gpu_check.json", "gpu_check.log", "rows.jsonl", "gpu_verified.json", "gpu_check.tar.gz")
PARTS = ("gpu_check.json.part", ".gpu_check.tar.gz.part")  # written then renamed; left only by a kill mid-write
MAX_FILES = 8
TEST_TIMEOUT_S = 40  # per test (setup and call each), GPU lane
KILL_GRACE_S = 3.0
# Dense spec-sheet peaks (FLOP/s) for MFU; an unknown GPU gets only the measured-matmul ratio.
_HOPPER = {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}  # H100/H200 SXM (H200: same compute, more HBM)
PEAKS = {"H100": _HOPPER, "H200": _HOPPER, "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}}
LEE_KIM = dict(images=512, pgd_steps=200, eot=20, nfe=100)  # CIFAR-10 DiffPure, t* = 0.1: 100 steps per purification
REF = "eager-fp32@torch"


class Terminated(Exception):
    """SIGTERM (e.g. from `timeout`): stop the running step, then write the report and the archive."""


# ---------------------------------------------------------------------------------------------- running a step
def kill_group(p: subprocess.Popen, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM to the step's whole process group, SIGKILL to whatever is left of it after `grace` seconds (children
    included), and wait until none of its processes runs any more."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    p.wait()
    deadline = time.monotonic() + 5.0
    while _group_members(p.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that still run (zombies excluded); Linux /proc."""
    out = []
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


class Runner:
    """Runs steps as process groups, streams their output to the log, kills them at their deadline."""

    def __init__(self, out: Path, rows: Path, log: Path):
        self.out, self.rows, self.log = out, rows, log
        self.current: subprocess.Popen | None = None

    def run(self, name: str, cmd: list[str], limit: float, env: dict, simulate: bool = False) -> dict:
        cmd = [str(c) for c in cmd]
        t0 = time.perf_counter()
        with open(self.log, "a") as log:
            log.write(f"\n===== step {name} (limit {limit:.0f} s): {' '.join(cmd)}\n")
            log.flush()
            start = log.tell()
            if limit <= 0:
                log.write(f"===== step {name}: SKIPPED, no time left\n")
                return {"cmd": " ".join(cmd), "rc": None, "seconds": 0.0, "timed_out": True, "limit_s": 0.0,
                        "skip_reason": "no time left"}
            rows_at = self.rows.stat().st_size if self.rows.exists() else 0
            p = self.current = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
            timed_out, hang = False, None
            try:
                while p.poll() is None:
                    now = time.perf_counter() - t0
                    if simulate and hang is None:
                        hang = _find_hang(self.rows, rows_at, name)
                        if hang is not None:
                            limit = min(limit, now + 1.0)  # the simulated step hung: its limit comes now
                    if now >= limit:
                        timed_out = True
                        kill_group(p)
                        break
                    time.sleep(0.1)
            except Terminated:
                kill_group(p)
                raise
            finally:
                self.current = None
            seconds = round(time.perf_counter() - t0, 1)
            state = "TIMED OUT (process group killed)" if timed_out else f"rc={p.returncode}"
            log.write(f"\n===== step {name}: {state} after {seconds} s\n")
        tail = _read_from(self.log, start)[-2500:]
        r = {"cmd": " ".join(cmd), "rc": None if timed_out else p.returncode, "seconds": seconds,
             "timed_out": timed_out, "limit_s": round(limit, 1), "tail": tail}
        if simulate:
            r["simulated_timeout"] = True
            r["hang"] = hang
            r["hang_child_alive_after_kill"] = _alive(hang and hang.get("child_pid"))
            r["hang_process_alive_after_kill"] = _alive(hang and hang.get("pid"))
        return r


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _find_hang(rows: Path, offset: int, step: str) -> dict | None:
    if not rows.exists():
        return None
    for line in _read_from(rows, offset).splitlines():
        if '"hang"' in line:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("kind") == "hang":
                return r
    return None


def read_rows(path: Path) -> list[dict]:
    """Every complete JSON line (a line cut by a kill is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out


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
    elif dry_skip:
        print(row["skipped"], flush=True)
    elif not nvcc:
        row.update(ok=False, reason="no nvcc (PATH, CUDA_HOME): the CUDA kernels cannot be built here; the C++ ops "
                                    "are built without them and only the Triton backend can be verified")
        env["FASTPURIFY_WITH_CUDA"] = "0"
    if not dry and not dry_skip:
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
    _meta.append_jsonl(out_rows, row)
    print(json.dumps({k: v for k, v in row.items() if k != "info"}), flush=True)
    if _meta.hang_after() is not None:
        _meta.hang("build", out_rows)
    return 0 if row.get("ok") is not False else 1


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


def internal_roofline(out_rows: Path, dry: bool) -> int:
    """Copy bandwidth and matmul rates, one JSON line each (`gpu_check.py --internal roofline`)."""
    import torch

    device = "cpu" if dry or not torch.cuda.is_available() else "cuda"
    n_copy, n_mm = ((1 << 30), 8192) if device == "cuda" else ((1 << 24), 256)

    def timed(fn, reps):
        for _ in range(2):
            fn()
        ts = []
        for _ in range(reps):
            if device == "cuda":
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                ts.append(a.elapsed_time(b) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
        return sorted(ts)[len(ts) // 2]

    def copy_rate() -> dict:
        src = torch.empty(n_copy // 4, dtype=torch.float32, device=device).uniform_()
        dst = torch.empty_like(src)
        s = timed(lambda: dst.copy_(src), 20)
        return dict(kind="roofline", what="copy", bytes=n_copy, gb_per_s=2 * n_copy / s / 1e9, median_s=s,
                    device=device)

    row = copy_rate()
    _meta.append_jsonl(out_rows, row)
    print(json.dumps(row), flush=True)
    if _meta.hang_after() is not None:
        _meta.hang("roofline", out_rows)
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        if device == "cpu" and name == "tf32":
            continue
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n_mm, n_mm, device=device, dtype=dtype)
        b = torch.randn(n_mm, n_mm, device=device, dtype=dtype)
        s = timed(lambda: a @ b, 10)
        row = dict(kind="roofline", what=f"matmul_{name}", n=n_mm, flop_per_s=2 * n_mm ** 3 / s, median_s=s,
                   device=device)
        _meta.append_jsonl(out_rows, row)
        print(json.dumps(row), flush=True)
    return 0


def _pythonpath() -> str:
    return os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")] +
                           ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))


# ---------------------------------------------------------------------------------------------- verification
_BACKEND_NAMES = ("cuda", "triton", "cpu", "torch")


def test_backends(nodeid: str) -> set[str]:
    """The backends a test's parameters name ('…[REALISTIC-0-mid-ddim-cuda]' → {'cuda'})."""
    params = nodeid.partition("[")[2].rstrip("]")
    return {t for t in re.split(r"[-,\s]", params) if t in _BACKEND_NAMES}


def verified_backends(tests: list[dict], candidates, completed: bool) -> tuple[list[str], dict]:
    """Which candidates the op tests verify, and why each other one is not: the step completed (no timeout, pytest
    exit 0/1), every backend-independent test passed, and every test naming the backend passed (at least one)."""
    why: dict[str, str] = {}
    if not completed:
        return [], {b: "the op tests did not complete (timeout or crash)" for b in candidates}
    bad = [t["nodeid"] for t in tests if t["outcome"] in ("failed", "error") and not test_backends(t["nodeid"])]
    ok = []
    for b in candidates:
        mine = [t for t in tests if b in test_backends(t["nodeid"])]
        failed = [t["nodeid"] for t in mine if t["outcome"] in ("failed", "error")]
        if bad:
            why[b] = f"backend-independent tests failed: {bad[:3]}"
        elif failed:
            why[b] = f"{len(failed)} of its tests failed: {failed[:3]}"
        elif not any(t["outcome"] == "passed" for t in mine):
            why[b] = "no test of it passed (not available, or all skipped)"
        else:
            ok.append(b)
    return ok, why


# ---------------------------------------------------------------------------------------------- summaries
def summarize_tests(tests: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    failures = [{"nodeid": t["nodeid"], "message": (t.get("message") or "")[-600:]} for t in tests
                if t["outcome"] in ("failed", "error")]
    slow = sorted(tests, key=lambda t: -t.get("seconds", 0))[:5]
    return {"counts": counts, "failures": failures[:20], "slowest": [(t["nodeid"], t["seconds"]) for t in slow]}


def summarize_ops(rows: list[dict]) -> dict:
    ops = [r for r in rows if r.get("kind") == "op"]
    table = [{k: r.get(k) for k in ("case", "provider", "dtype", "tensor_mib", "median_s", "gb_per_s", "pct_of_copy",
                                    "elements_per_s", "roofline", "pct_of_roofline", "meets_target")} for r in ops]
    step0 = [r for r in ops if r["case"] == "sampler_step_nonoise" and r["provider"] != "torch"]
    noisy = [r for r in ops if r["case"] == "sampler_step" and r["provider"] != "torch"]
    def best(rs, k):
        return max(rs, key=lambda r: r[k]) if rs else None

    b0, bn = best(step0, "pct_of_copy"), best(noisy, "pct_of_roofline")
    return {"rows": table, "copy": [r for r in rows if r.get("kind") == "copy"],
            "noise_bound": next((r for r in rows if r.get("kind") == "noise_bound"), None),
            "step_noise_free_best": b0 and {k: b0[k] for k in ("provider", "dtype", "gb_per_s", "pct_of_copy",
                                                                  "meets_target")},
            "step_noisy_best": bn and {k: bn[k] for k in ("provider", "dtype", "gb_per_s", "elements_per_s",
                                                            "pct_of_roofline", "roofline")},
            "skipped": [r for r in rows if r.get("kind") == "skip" and "case" in r][:20],
            "errors": [r for r in rows if r.get("kind") == "error" and "case" in r][:20]}


def summarize_purify(rows: list[dict], gpu: str | None, matmul: dict) -> dict:
    """Ratios to the reference row (eager fp32 on the torch backend, same plan, batch and mode), MFU per row, the
    Lee & Kim projection."""
    refs = {(r["plan"], r["batch"], r["mode"]): r for r in rows if r.get("kind") == "row" and r["config"] == REF}
    peaks = next((v for k, v in PEAKS.items() if gpu and k in gpu), None)
    table = []
    for r in rows:
        if r.get("kind") != "row":
            continue
        ref = refs.get((r["plan"], r["batch"], r["mode"]))
        flops = ref and ref.get("flops_per_step")
        low = r["options"].get("precision") == "bf16"
        achieved = flops / r["s_per_step"] if flops else None
        spec = peaks and (peaks["bf16"] if low else peaks["tf32" if r.get("cudnn_tf32") else "fp32"])
        mm = matmul.get("bf16" if low else ("tf32" if r.get("cudnn_tf32") else "fp32"))
        table.append(dict(model=r["model"], plan=r["plan"], batch=r["batch"], mode=r["mode"], config=r["config"],
                          op_backend_used=r.get("op_backend_used"), s_per_step=r["s_per_step"],
                          images_per_s=r["images_per_s"], ratio_vs_ref=ref and ref["s_per_call"] / r["s_per_call"],
                          first_call_s=r["first_call_s"], value_max_abs_diff=r.get("value_max_abs_diff"),
                          grad_rel_err=r.get("grad_rel_err"), peak_mem_gib=r.get("peak_mem_gib"),
                          capture=(r.get("graphs") or {}).get("capture"),
                          tflop_per_s=achieved and achieved / 1e12, mfu_vs_spec=achieved and spec and achieved / spec,
                          mfu_vs_matmul=achieved and mm and achieved / mm))
    # Lee & Kim: every PGD step of every EOT draw is one exact full gradient through a 100-step purification.
    grads = [t for t in table if t["model"] == "ncsnpp" and t["mode"] == "full" and
             (t["grad_rel_err"] is None or t["grad_rel_err"] <= 5e-2)]
    best = max(grads, key=lambda t: t["batch"] / t["s_per_step"], default=None)
    projection = None
    if best:
        s_per_image = best["s_per_step"] * LEE_KIM["nfe"] / best["batch"]
        n = LEE_KIM["images"] * LEE_KIM["pgd_steps"] * LEE_KIM["eot"]
        projection = dict(**LEE_KIM, gradient_evaluations=n, from_row=f"{best['config']} batch {best['batch']}",
                          s_per_image_gradient=s_per_image, gpu_hours=n * s_per_image / 3600, gpu=gpu,
                          note="measured per-step time × 100 steps; excludes the final re-evaluation (N forward "
                               "purifications per image, < 1 % of the attack's cost)")
    other = [r for r in rows if r.get("kind") in ("error", "skip") and "config" in r]
    return {"rows": table, "lee_kim_projection": projection, "errors_and_skips": other[:30],
            "cut_while": [r for r in rows if r.get("kind") == "start"][-1:]}


def archive(out: Path) -> Path:
    """gpu_check.tar.gz: every other file of the folder."""
    path = out / "gpu_check.tar.gz"
    tmp = out / ".gpu_check.tar.gz.part"
    with tarfile.open(tmp, "w:gz") as tar:
        for f in sorted(out.iterdir()):
            if f.is_file() and f.name not in (path.name, tmp.name):
                tar.add(f, arcname=f"gpu_check/{f.name}")
    tmp.replace(path)
    return path


def plan_text(budgets: dict[str, float], skip: set[str]) -> str:
    lines, total = [], 0.0
    for s in PLAN:
        b = 0.0 if s.name in skip else budgets[s.name]
        total += b
        lines.append(f"  {s.name:10s} {b:5.0f} s  (by {total:5.0f} s)  {s.what}" + ("  [skipped]" if s.name in skip
                                                                                  else ""))
    return "\n".join(lines) + f"\n  {'total':10s} {total:5.0f} s"


# ---------------------------------------------------------------------------------------------- the check
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=False, help="output folder (≤ 8 files; created, must hold no others)")
    ap.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU (script check)")
    ap.add_argument("--skip", default="", help=f"comma list of steps to skip ({', '.join(STEPS)})")
    ap.add_argument("--budget", action="append", default=[], metavar="STEP=S", help="override a step's budget")
    ap.add_argument("--simulate-timeout", default="", metavar="STEPS",
                    help="comma list of steps (or 'all') that hang after their first result and are killed")
    ap.add_argument("--record-package", action="store_true",
                    help="also write the verification record into fastpurify/ops/gpu_verified.json")
    ap.add_argument("--merge-record", type=Path, metavar="FILE",
                    help="merge the records of FILE (an OUTDIR/gpu_verified.json brought back from a GPU) into "
                         "fastpurify/ops/gpu_verified.json, then exit: commit that file with the results")
    ap.add_argument("--internal", choices=("build", "roofline"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.merge_record:
        print(json.dumps(merge_record(args.merge_record), indent=1))
        return 0
    if args.out is None:
        ap.error("--out DIR is required")
    rows_path = args.out / "rows.jsonl"
    if args.internal == "build":
        return internal_build(rows_path, args.dry_run)
    if args.internal == "roofline":
        return internal_roofline(rows_path, args.dry_run)

    skip = set(filter(None, args.skip.split(",")))
    simulate = set(STEPS) if args.simulate_timeout == "all" else set(filter(None, args.simulate_timeout.split(",")))
    for name in skip | simulate:
        if name not in STEPS:
            ap.error(f"unknown step {name!r}; steps: {', '.join(STEPS)}")
    budgets = {s.name: (s.dry_s if args.dry_run else s.budget_s) for s in PLAN}
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in budgets:
            ap.error(f"--budget {item}: unknown step")
        budgets[name] = float(value)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    foreign = [f.name for f in out.iterdir() if f.name not in FILES + PARTS]
    if foreign:
        ap.error(f"{out} holds other files ({', '.join(foreign[:5])}): give an empty or new folder")
    for name in FILES + PARTS:
        (out / name).unlink(missing_ok=True)
    log = out / "gpu_check.log"
    log.touch()
    record_path = Path(os.environ["FASTPURIFY_GPU_VERIFIED"]) if os.environ.get("FASTPURIFY_GPU_VERIFIED") \
        else out / "gpu_verified.json"

    t_start = time.perf_counter()
    import torch  # fastpurify itself is imported only by the steps (after the build)

    gpu = torch.cuda.is_available() and not args.dry_run
    report = {"dry_run": args.dry_run, "out": str(out), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "plan": [{"step": s.name, "budget_s": 0 if s.name in skip else budgets[s.name], "what": s.what}
                       for s in PLAN],
              "plan_total_s": sum(budgets[s] for s in STEPS if s not in skip), "steps": {}, "errors": {}}
    header = (f"gpu_check: {'GPU' if gpu else 'dry run on the CPU (tiny sizes; no GPU number)'} → {out}\n"
              f"plan (budgets; a step ends by the cumulative time):\n{plan_text(budgets, skip)}")
    print(header, flush=True)
    with open(log, "a") as f:
        f.write(header + "\n")
    report["versions"] = versions(gpu)
    report["gpu"] = report["versions"].get("gpu")
    _meta.append_jsonl(rows_path, {"kind": "versions", **report["versions"]})
    runner = Runner(out, rows_path, log)

    def on_term(signum, frame):
        raise Terminated()

    signal.signal(signal.SIGTERM, on_term)

    def save():
        report["total_seconds"] = round(time.perf_counter() - t_start, 1)
        tmp = out / "gpu_check.json.part"
        tmp.write_text(json.dumps(report, indent=1, default=str))
        tmp.replace(out / "gpu_check.json")

    def section(name: str, fn):
        try:
            return fn()
        except Terminated:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is recorded, none loses the report
            report["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            print(f"  {name}: ERROR {type(e).__name__}: {e}", flush=True)
            return None
        finally:
            save()

    base_env = {**os.environ, "PYTHONPATH": _pythonpath(), "PYTHONUNBUFFERED": "1"}
    if args.dry_run:  # tiny tensors on a CPU that may be shared: idle OpenMP workers would stall every op
        base_env["OMP_NUM_THREADS"] = "1"
    test_env = {"FASTPURIFY_AUTOTUNE": "1", "FASTPURIFY_TEST_TIMEOUT": str(TEST_TIMEOUT_S),
                "FASTPURIFY_TEST_JSONL": str(rows_path)}
    cuda_kernels = False
    elapsed_plan = 0.0  # the cumulative budget: step i must end by t_start + the sum of budgets 1..i

    def run_step(name: str, cmd: list, env: dict | None = None) -> dict | None:
        nonlocal elapsed_plan
        if name in skip:
            report["steps"][name] = {"skip_reason": "--skip"}
            return None
        elapsed_plan += budgets[name]
        limit = min(elapsed_plan, report["plan_total_s"]) - (time.perf_counter() - t_start)
        step_env = {**base_env, **(env or {})}
        if name in simulate:
            step_env["FASTPURIFY_HANG_AFTER"] = "1"
        print(f"  {name:10s} … (limit {limit:.0f} s)", flush=True)
        r = report["steps"][name] = runner.run(name, cmd, limit, step_env, simulate=name in simulate)
        save()
        state = "TIMED OUT (group killed, partial results kept)" if r["timed_out"] else f"rc={r['rc']}"
        print(f"  {name:10s} {state} in {r['seconds']} s", flush=True)
        return r

    py = sys.executable
    dry = ["--dry-run"] if args.dry_run else []
    interrupted = False
    try:
        # 1. build
        r = run_step("build", [py, __file__, "--internal", "build", "--out", out, *dry])
        build = next((x for x in reversed(read_rows(rows_path)) if x.get("kind") == "build"), None)
        report["build"] = build and {k: v for k, v in build.items() if k != "info"}
        report["fastpurify_info"] = build and build.get("info")
        cuda_kernels = bool(build and build.get("cuda_kernels"))
        if r is None and not args.dry_run:  # --skip build: whatever is installed
            cuda_kernels = section("info", lambda: _probe_cuda_kernels(base_env)) or False

        # 2. op tests: the verification
        candidates = ((("cuda",) if cuda_kernels else ()) + ("triton",)) if gpu else ("cpu",)
        if gpu:
            files, marks = ["tests/test_gpu_ops.py"], ["-m", "gpu"]
        else:  # the GPU file (skipped here) and a CPU stand-in whose backends name 'cpu' and 'torch'
            files = ["tests/test_gpu_ops.py", "tests/test_ops_sampler_step.py"]
            marks = ["-m", "not slow", "-k", "not sampler_step or (realistic and True and ddim)"]
        workers = ["-n", "4"] if gpu and report["versions"].get("pytest_xdist") else []
        cmd = [py, "-m", "pytest", "-v", "-p", "_meta", "-p", "no:cacheprovider", _basetemp(), *workers, *marks,
               *files]
        r = run_step("optests", cmd, {**test_env, "FASTPURIFY_TEST_STEP": "optests",
                                      "FASTPURIFY_GPU_EXPECT": ",".join(c for c in candidates if c != "cpu")})
        if r is not None:
            tests = [x for x in read_rows(rows_path) if x.get("kind") == "test" and x.get("step") == "optests"]
            report["optests"] = summarize_tests(tests)
            completed = not r["timed_out"] and r["rc"] in (0, 1)
            ok, why = verified_backends(tests, candidates, completed)
            report["verification"] = {"candidates": list(candidates), "verified": ok, "not_verified": why,
                                      "cuda_kernels_built": cuda_kernels}
            if ok:
                rec = section("gpu_verified", lambda: _record(ok, gpu, record_path, args.record_package))
                report["verification"]["record"] = rec
                report["verification"]["record_path"] = str(record_path)
            save()
        # Benchmarks: two Triton configs (the usual best first): half the compiles of the full space, and the first
        # is already in Triton's cache from the op tests.  Recorded in every op row ("autotune").
        later_env = {"FASTPURIFY_GPU_VERIFIED": str(record_path), "FASTPURIFY_AUTOTUNE": "2"}

        # 3. roofline
        run_step("roofline", [py, __file__, "--internal", "roofline", "--out", out, *dry])
        rows = read_rows(rows_path)
        copy = next((x for x in rows if x.get("kind") == "roofline" and x["what"] == "copy"), None)
        report["copy_gb_per_s"] = copy and round(copy["gb_per_s"], 1)
        matmul = {x["what"][7:]: x["flop_per_s"] for x in rows if x.get("kind") == "roofline" and
                  x["what"].startswith("matmul_")}
        report["matmul_flop_per_s"] = matmul

        # 4. ops (the script keeps a few seconds for its own start-up)
        lim = _left(budgets, "ops", elapsed_plan, t_start)
        clock = (report["versions"].get("nvidia_smi") or {}).get("max_sm_clock", "")
        clock_arg = ["--clock-mhz", clock.split()[0]] if clock and clock.split()[0].isdigit() else []
        run_step("ops", [py, "benchmarks/bench_ops.py", "--jsonl", rows_path, "--budget", max(lim - 12, 3),
                         *clock_arg, *dry], later_env)
        report["ops"] = section("ops_summary", lambda: summarize_ops(read_rows(rows_path)))

        # 5–6. purification matrices
        for plan in ("ncsnpp", "adm"):
            lim = _left(budgets, plan, elapsed_plan, t_start)
            run_step(plan, [py, "benchmarks/gpu_purify.py", "--plan", plan, "--out", rows_path,
                            "--budget", max(lim - 15, 3), *dry], later_env)
            report["purify"] = section("purify_summary", lambda: summarize_purify(read_rows(rows_path), report["gpu"],
                                                                                   matmul))

        # 7. graph tests (reported apart; verification does not rest on them)
        if gpu:
            files, marks = ["tests/test_graphed.py"], ["-m", "gpu"]
        else:  # the GPU tests skip here; the capture double's CPU tests stand in
            files = ["tests/test_graphed.py", "tests/test_gpu_capture.py"]
            marks = ["-m", "not slow", "-k", "gpu or captured_purification_equals_eager"]
        r = run_step("graphtests", [py, "-m", "pytest", "-v", "-p", "_meta", "-p", "no:cacheprovider", _basetemp(),
                                    *marks, *files],
                     {**later_env, **test_env, "FASTPURIFY_TEST_STEP": "graphtests", "FASTPURIFY_TEST_TIMEOUT": "90"})
        if r is not None:
            report["graphtests"] = summarize_tests([x for x in read_rows(rows_path) if x.get("kind") == "test" and
                                                    x.get("step") == "graphtests"])

        # 8. compiled, last
        lim = _left(budgets, "compiled", elapsed_plan, t_start)
        run_step("compiled", [py, "benchmarks/gpu_purify.py", "--plan", "compiled", "--out", rows_path,
                              "--budget", max(lim - 15, 3), *dry], later_env)
        report["purify"] = section("purify_summary", lambda: summarize_purify(read_rows(rows_path), report["gpu"],
                                                                               matmul))
    except Terminated:
        interrupted = True
        report["errors"]["interrupted"] = "SIGTERM: the running step's process group was killed"
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish the report and the archive whatever comes now
        ran = [s for s in report["steps"].values() if "rc" in s]
        report["ok"] = (not interrupted and all(s["rc"] == 0 and not s["timed_out"] for s in ran)
                        and not report["errors"])
        save()
        _print_summary(report, out)
        try:
            archive(out)
        except Exception as e:  # noqa: BLE001 - the files themselves are still in the folder
            print(f"gpu_check: archive failed: {type(e).__name__}: {e}", flush=True)
        for tmp in _TEMPS:
            shutil.rmtree(tmp, ignore_errors=True)
        files = sorted(f.name for f in out.iterdir())
        if len(files) > MAX_FILES:
            print(f"gpu_check: WARNING {len(files)} files in {out} (at most {MAX_FILES}): {files}", flush=True)
    return 0 if report["ok"] else (124 if interrupted else 1)


def _basetemp() -> str:
    """A pytest --basetemp of the step's own (outside the output folder), so a test step never shares or rotates the
    temporary folders of another pytest run on the machine (this one's caller, say)."""
    _TEMPS.append(tempfile.mkdtemp(prefix="gpu-check-pytest-"))
    return f"--basetemp={_TEMPS[-1]}"


_TEMPS: list[str] = []  # removed when the check ends


def _left(budgets, name: str, elapsed_plan: float, t_start: float) -> float:
    """The limit `name` will get when it starts now (run_step computes the same)."""
    return elapsed_plan + budgets[name] - (time.perf_counter() - t_start)


def _probe_cuda_kernels(env: dict) -> bool:
    code = "from fastpurify.ops import _ext; print(_ext.has_cuda_kernels())"
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    return p.stdout.strip() == "True"


def _record(backends: list[str], gpu: bool, path: Path, package: bool) -> dict:
    """mark_gpu_verified for the verified backends (a dry run records its stand-in under a made-up GPU name)."""
    sys.path.insert(0, str(ROOT))
    from fastpurify.ops.registry import VERIFIED_PATH, mark_gpu_verified

    commit = _meta.commit()
    if not gpu:
        return mark_gpu_verified(("cuda", "triton"), commit=commit, path=path, gpu="dry run (no GPU)",
                                 capability=(0, 0))
    rec = mark_gpu_verified(backends, commit=commit, path=path)
    if package and Path(path) != VERIFIED_PATH:
        mark_gpu_verified(backends, commit=commit, path=VERIFIED_PATH)
    return rec


def merge_record(path: Path, into: Path | None = None) -> list[dict]:
    """Add the records of `path` to the package's file (same GPU, capability and versions: replaced)."""
    sys.path.insert(0, str(ROOT))
    from fastpurify.ops.registry import VERIFIED_PATH, load_verified

    into = into or VERIFIED_PATH
    key = ("gpu", "capability", "fastpurify", "torch")
    new = load_verified(path)
    if any(r.get("gpu") == "dry run (no GPU)" for r in new):
        raise SystemExit(f"{path} holds a dry-run record (no GPU): not merged")
    keep = [r for r in load_verified(into) if tuple(r.get(k) for k in key) not in
            {tuple(n.get(k) for k in key) for n in new}]
    Path(into).write_text(json.dumps({"records": keep + new}, indent=2) + "\n")
    return keep + new


def _print_summary(report: dict, out: Path) -> None:
    v = report.get("verification") or {}
    print(f"  verified: {v.get('verified')}  not: {v.get('not_verified')}", flush=True)
    for name in ("optests", "graphtests"):
        if report.get(name):
            print(f"  {name}: {report[name]['counts']}")
    print(f"  copy {report.get('copy_gb_per_s')} GB/s; matmul {report.get('matmul_flop_per_s')}")
    ops = report.get("ops") or {}
    print(f"  σ = 0 step best: {ops.get('step_noise_free_best')}; noisy step best: {ops.get('step_noisy_best')}")
    for name, err in (report.get("errors") or {}).items():
        print(f"  ERROR in {name}: {err[:300]}")
    if report.get("dry_run"):
        print("  (dry run: the times below are of tiny models on this CPU — a script check, not a GPU number)")
    for r in (report.get("purify") or {}).get("rows", []):
        ratio = r["ratio_vs_ref"]
        print(f"  {r['model']:6s} b{r['batch']:<4d} {r['mode']:6s} {r['config']:28s} {r['images_per_s']:10.2f} img/s "
              f"x{ratio or 0:6.2f} vs {REF}  MFU {100 * (r['mfu_vs_spec'] or 0):5.1f} % (spec)")
    lk = (report.get("purify") or {}).get("lee_kim_projection")
    if lk:
        print(f"  Lee & Kim (512 × PGD-200 × EOT-20, exact): {lk['gpu_hours']:.1f} GPU-hours ({lk['from_row']})")
    print(f"gpu_check: {'ok' if report.get('ok') else 'NOT OK'} in {report.get('total_seconds')} s; "
          f"{out / 'gpu_check.json'}, archive {out / 'gpu_check.tar.gz'}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
