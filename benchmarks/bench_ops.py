"""Fused ops × backends: a pytest-benchmark module (the CPU tables) and a script (the GPU check), both writing one
JSON line per case as soon as it is measured, so a run cut short keeps what it measured.

    python -m pytest benchmarks/bench_ops.py --benchmark-enable --benchmark-json=benchmarks/results/cpu/bench_ops.json
    python benchmarks/summarize.py benchmarks/results/cpu/bench_ops.json          # table: GB/s and ratios
    python benchmarks/bench_ops.py --jsonl ops.jsonl --budget 35                  # GPU: 256 MiB tensors, CUDA events
    python benchmarks/bench_ops.py --jsonl ops.jsonl --dry-run                    # the script at tiny sizes, CPU

Cases: normal (the Philox noise alone, float32), forward_diffuse and its backward, sampler_step with noise (σ > 0)
and without (σ = 0, e.g. DDIM η = 0 and every sampler's last step: the kernels skip the RNG then, so it is a pure
streaming op), guided with K = 2 terms, its backward, guidance_accumulate.  Every case is timed for each backend that
can run it here (torch = the reference: the eager chain of torch ops with the same Philox noise; cpu = C++; triton;
cuda).  Each row records the backend it ran with ("provider"), bytes moved, GB/s and, where a roofline applies:
  noise-free cases   bytes / the device-to-device copy bandwidth measured in the same process (read + write).
                     Target for the σ = 0 step: ≥ 85 % of copy (TARGET_PCT_OF_COPY).
  noisy cases        also bounded by arithmetic: one Philox4x32-10 block per element (counter = element index; a
                     thread's kVec = 4 elements take 4 blocks, two of each block's four words used) plus the precise
                     Box–Muller (logf, cosf, sqrtf): ≈ 1,100 instructions per 4 elements (PHILOX_INSTR_PER_4: the
                     static size of the sm_90 code, 1,136 for normal_kernel and 1,184 for the fp32 noisy step, counted
                     with cuobjdump on a build made on the CPU machine; gpu_check recounts its own build).  That count
                     includes cosf's slow range reduction, never taken for 2π·u2 in [0, 2π): the path a thread runs is
                     ≈ 600 per 4 elements (PHILOX_FAST_PATH_PER_4, ≈ 146 per element read off the same code).  At one
                     warp instruction per scheduler per clock (128 lanes per SM) the issue bound is
                     SMs · 128 · f_clock / (instructions per element): for an H200 (132 SMs, 1.98 GHz by the spec
                     sheet) 1.2·10¹¹ normals/s at 1,100 and 2.2·10¹¹ at 600 (estimates, not measurements), i.e. 34 %
                     and 63 % of a 4.3 TB/s copy for an fp32 step (12 bytes per element): the noisy step is bounded
                     by arithmetic, not by memory.  Its row gives pct_of_roofline against min(copy, the 600 bound)
                     and pct_of_bound_1100 against the 1,100 one.
                     The noise specification (fastpurify/ops/reference/philox.py) is fixed; this only states its cost.

Script timing: CUDA events around each launch (median of ≥ 3, as many as fit in ~0.3 s per case) after a warm-up
call (Triton compiles and autotunes there), on (B, 4, 256, 256) tensors of --mib MiB each (default 256).

pytest environment: FASTPURIFY_BENCH_DEVICE (default cuda if available, else cpu), FASTPURIFY_BENCH_DTYPES (default
"fp32"), FASTPURIFY_BENCH_COMPILE=1 adds a torch.compile(reference) provider, FASTPURIFY_BENCH_THREADS=n (on a shared
machine idle OpenMP workers stall every eager op by milliseconds: compare single-threaded numbers there),
FASTPURIFY_BENCH_JSONL=path (one line per case as it completes).  pytest sizes: 64×3×32×32 everywhere; 64×3×256×256
on GPUs, 8×3×256×256 on the CPU.  The pytest rows also carry two eager baselines (ratio_vs_torch: the torch backend;
ratio_vs_eager_randn: the same chain drawing torch.randn, a floor for eager torch without per-sample streams).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from functools import lru_cache
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder: _meta.py
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout: fastpurify
import _meta  # noqa: E402

import fastpurify  # noqa: E402
from fastpurify import ops  # noqa: E402
from fastpurify.ops.reference.forward_diffusion import forward_diffuse_bwd_ref, forward_diffuse_ref  # noqa: E402
from fastpurify.ops.reference.philox import STEP, normal_ref  # noqa: E402
from fastpurify.ops.reference.sampler_step import (  # noqa: E402
    guidance_accumulate_ref,
    sampler_step_bwd_ref,
    sampler_step_ref,
)
from fastpurify.ops.registry import backends_for  # noqa: E402

DEVICE = os.environ.get("FASTPURIFY_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BENCH_DTYPES = [DTYPES[d] for d in os.environ.get("FASTPURIFY_BENCH_DTYPES", "fp32").split(",")]
SHAPES = [(64, 3, 32, 32), (64, 3, 256, 256) if DEVICE == "cuda" else (8, 3, 256, 256)]
PROVIDERS = ["torch", "cpu", "triton", "cuda"] + (["compiled"] if os.environ.get("FASTPURIFY_BENCH_COMPILE") else [])
# In order of value: the script runs them in this order (dtype by dtype) and stops when its budget is spent.
CASES = ["sampler_step_nonoise", "sampler_step", "forward_diffuse", "normal", "sampler_step_bwd", "sampler_step_guided",
         "guidance_accumulate", "forward_diffuse_bwd"]
NOISY = {"normal", "forward_diffuse", "sampler_step", "sampler_step_guided"}
K = 2  # guidance terms in the guided cases
TARGET_PCT_OF_COPY = 85.0  # the σ = 0 step (and every noise-free case) against the device-to-device copy
PHILOX_INSTR_PER_4 = 1100  # instructions per 4 noisy elements: the static sm_90 code size (module docstring)
PHILOX_FAST_PATH_PER_4 = 600  # …of which a thread executes about this many (no slow range reduction in cosf)
LANES_PER_SM = 128  # 4 schedulers × 32 lanes issue one warp instruction each per clock
if os.environ.get("FASTPURIFY_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["FASTPURIFY_BENCH_THREADS"]))


def _sync(device=None):
    if (device or DEVICE) == "cuda":
        torch.cuda.synchronize()


@lru_cache(maxsize=1)
def _inputs(shape, dtype, device=None):
    device = device or DEVICE
    g = torch.Generator().manual_seed(0)
    mk = (lambda *s: torch.randn(*s, generator=g).to(device, dtype))  # noqa: E731
    acc = ops.acc_dtype(dtype)
    coef = torch.rand(10, 7, generator=g).to(device, acc)
    coef[:, 2] *= 0.1
    coef0 = coef.clone()
    coef0[:, 5] = 0.0  # σ = 0: the noise-free step
    B = shape[0]
    return dict(x=mk(*shape), eps=mk(*shape), go=mk(*shape), g=mk(K, *shape), gw=torch.rand(K, B).to(device, acc),
                coef=coef, coef0=coef0, k=torch.tensor(3, device=device),
                seeds=torch.arange(B, device=device) * 7919, a=torch.rand(1000).to(device),
                s=torch.rand(1000).to(device), t=torch.randint(0, 1000, (B,), generator=g).to(device))


def _case(case: str, provider: str, d: dict):
    """(callable, bytes it must move, the op name in the registry)."""
    n, es = d["x"].numel(), d["x"].element_size()
    f = (lambda name: backends_for(name)[provider].fns) if provider not in ("torch", "compiled") else None
    if case == "normal":  # the noise alone: float32 out, nothing read
        fn = f("normal")["fwd"] if f else normal_ref
        shape = tuple(d["x"].shape)
        return (lambda: fn(d["seeds"], shape, 3, STEP, 0)), 4 * n, "normal"
    if case == "forward_diffuse":
        fn = f("forward_diffuse")["fwd"] if f else forward_diffuse_ref
        return (lambda: fn(d["x"], d["a"], d["s"], d["t"], d["seeds"], 0, 0, 0)), 2 * n * es, "forward_diffuse"
    if case == "forward_diffuse_bwd":
        fn = f("forward_diffuse")["bwd"] if f else forward_diffuse_bwd_ref
        return (lambda: fn(d["go"], d["a"], d["t"])), 2 * n * es, "forward_diffuse"
    if case in ("sampler_step", "sampler_step_guided", "sampler_step_nonoise"):
        fn = f("sampler_step")["fwd"] if f else sampler_step_ref
        g, gw = (d["g"], d["gw"]) if case.endswith("guided") else (None, None)
        coef = d["coef0"] if case.endswith("nonoise") else d["coef"]
        moved = (3 + (K if g is not None else 0)) * n * es
        return (lambda: fn(d["x"], d["eps"], g, gw, coef, d["k"], d["seeds"], True, STEP, 0)), moved, \
            "sampler_step"
    if case == "sampler_step_bwd":
        fn = f("sampler_step")["bwd"] if f else sampler_step_bwd_ref
        return (lambda: fn(d["go"], d["x"], d["eps"], d["gw"], d["coef"], d["k"], True, True)), (5 + K) * n * es, \
            "sampler_step"
    if case == "guidance_accumulate":
        fn = f("guidance_accumulate")["fwd"] if f else guidance_accumulate_ref
        return (lambda: fn(d["g"], d["gw"])), (K + 1) * n * es, "guidance_accumulate"
    raise ValueError(case)


def _randn_chain(case: str, d: dict):
    """The eager chain with torch.randn noise (no per-sample streams): only for the cases that draw noise."""
    x, eps = d["x"], d["eps"]
    if case == "normal":
        return lambda: torch.randn(x.shape, device=x.device)
    if case == "forward_diffuse":
        a, s = d["a"][d["t"]].to(x.dtype).view(-1, 1, 1, 1), d["s"][d["t"]].to(x.dtype).view(-1, 1, 1, 1)
        return lambda: a * x + s * torch.randn_like(x)
    if case in ("sampler_step", "sampler_step_guided"):
        def step():
            q0, q1, p0, p1, p2, sigma, sg = d["coef"][d["k"]].to(x.dtype).unbind()
            out = p0 * (q0 * x - q1 * eps).clamp(-1, 1) + p1 * x + p2 * eps + sigma * torch.randn_like(x)
            if case.endswith("guided"):
                out = out + sg * guidance_accumulate_ref(d["g"], d["gw"])
            return out
        return step
    return None


def _median_s(fn, rounds: int) -> float:
    fn()
    _sync()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        _sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def _rounds(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return 30 if DEVICE == "cuda" else (10 if n <= 300_000 else 3)


append_jsonl = _meta.append_jsonl  # one line per case, flushed and fsynced


def noise_issue_bound(device_index: int = 0, clock_mhz: float | None = None) -> dict | None:
    """The arithmetic (instruction-issue) bound of the noise on a CUDA device, elements/s; None off a GPU."""
    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(device_index)
    clock = clock_mhz * 1e6 if clock_mhz else getattr(props, "clock_rate", 0) * 1e3
    if not clock:
        return None
    issue = props.multi_processor_count * LANES_PER_SM * clock
    return dict(elements_per_s=issue / (PHILOX_FAST_PATH_PER_4 / 4),
                elements_per_s_1100=issue / (PHILOX_INSTR_PER_4 / 4), sms=props.multi_processor_count,
                clock_mhz=clock / 1e6, instructions_per_4_elements=PHILOX_INSTR_PER_4,
                fast_path_instructions_per_4_elements=PHILOX_FAST_PATH_PER_4, lanes_per_sm=LANES_PER_SM,
                note="issue bound: SMs·128·f_clock / (instructions per element); instruction counts from SASS")


_BASELINES: dict = {}


def _baselines(case, shape, dtype, d):
    """Medians of the eager baselines, measured once per (case, shape, dtype) in this run."""
    key = (case, shape, dtype)
    if key not in _BASELINES:
        ref_fn, _, _ = _case(case, "torch", d)
        randn = _randn_chain(case, d)
        _BASELINES[key] = (_median_s(ref_fn, _rounds(shape)), randn and _median_s(randn, _rounds(shape)))
    return _BASELINES[key]


@pytest.mark.parametrize("dtype", BENCH_DTYPES, ids=lambda t: str(t).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_op(benchmark, provider, case, shape, dtype):
    if case == "normal" and dtype != torch.float32:
        pytest.skip("normal draws float32 only")
    d = _inputs(shape, dtype)
    fn, moved, op = _case(case, provider, d)
    if provider not in ("torch", "compiled"):
        why = backends_for(op)[provider].why_not(torch.device(DEVICE), dtype)
        if why:
            pytest.skip(f"{provider}: {why}")
    if provider == "compiled":
        fn = torch.compile(fn)
        t0 = time.perf_counter()
        fn()
        _sync()
        benchmark.extra_info["compile_s"] = time.perf_counter() - t0
    ref_s, randn_s = _baselines(case, shape, dtype, d)

    def run():
        fn()
        _sync()

    benchmark.pedantic(run, rounds=_rounds(shape), warmup_rounds=2, iterations=1)
    med = benchmark.stats.stats.median
    load = _meta.loadavg()
    benchmark.extra_info.update(
        op=case, provider=provider, shape=list(shape), dtype=str(dtype).replace("torch.", ""), device=DEVICE,
        gpu=torch.cuda.get_device_name(0) if DEVICE == "cuda" else None, bytes_moved=moved, gb_per_s=moved / med / 1e9,
        ref_median_s=ref_s, ratio_vs_torch=ref_s / med, randn_median_s=randn_s,
        ratio_vs_eager_randn=(randn_s / med) if randn_s else None, noise=case in NOISY, torch=torch.__version__,
        triton=_triton_version(), fastpurify=fastpurify.__version__, commit=_meta.commit(),
        threads=torch.get_num_threads(), loadavg_1min=load)
    if os.environ.get("FASTPURIFY_BENCH_JSONL"):
        append_jsonl(os.environ["FASTPURIFY_BENCH_JSONL"], dict(kind="op", median_s=med, **benchmark.extra_info))


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None


# ---------------------------------------------------------------------------------------------- the script (GPU check)
def time_fn(fn, device: str, budget_s: float = 0.3, min_reps: int = 3, max_reps: int = 50) -> list[float]:
    """Seconds per call: CUDA events around each launch on a GPU (wall clock on the CPU), after one warm-up call;
    as many calls as fit in budget_s (at least min_reps)."""
    def once() -> float:
        return _meta.time_call(fn, device)

    fn()  # warm-up: Triton compiles and autotunes, allocator caches
    _sync(device)
    first = once()
    reps = max(min_reps, min(max_reps, int(budget_s / max(first, 1e-6))))
    return [once() for _ in range(reps)]


def _shape_for(mib: float, dtype: torch.dtype) -> tuple[int, int, int, int]:
    per_sample = 4 * 256 * 256 * torch.empty((), dtype=dtype).element_size()
    return max(1, round(mib * 2**20 / per_sample)), 4, 256, 256


def parse_args(argv) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jsonl", type=Path, required=True, help="rows, one JSON line per case, appended")
    ap.add_argument("--budget", type=float, default=35.0, help="seconds; no case starts after it is spent")
    ap.add_argument("--mib", type=float, default=256.0, help="MiB per tensor (GPU)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--providers", default="cuda,triton,torch", help="in the order they are timed per case")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--clock-mhz", type=float, default=None, help="SM clock for the noise bound (default: torch's)")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny tensors, providers torch and cpu")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    t_end = time.perf_counter() + args.budget
    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if args.dry_run:  # tiny tensors on a CPU that may be shared: idle OpenMP workers would stall every op
        torch.set_num_threads(1)
    providers = ["cpu", "torch"] if device == "cpu" else args.providers.split(",")
    meta = dict(device=device, gpu=torch.cuda.get_device_name(0) if device == "cuda" else None,
                dry_run=args.dry_run, torch=torch.__version__, triton=_triton_version(),
                fastpurify=fastpurify.__version__, autotune=os.environ.get("FASTPURIFY_AUTOTUNE") or "all")
    hang, emitted = _meta.hang_after(), [0]

    def emit(row):
        append_jsonl(args.jsonl, {**row, **meta})
        print(json.dumps(row)[:240], flush=True)
        emitted[0] += 1
        if hang is not None and emitted[0] >= hang:  # a simulated timeout (gpu_check --simulate-timeout ops)
            _meta.hang("ops", args.jsonl)

    bound = noise_issue_bound(0, args.clock_mhz) if device == "cuda" else None
    if bound:
        emit(dict(kind="noise_bound", **bound))
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        shape = _shape_for(args.mib, dtype) if device == "cuda" else (8, 3, 32, 32)
        d = _inputs(shape, dtype, device)
        nbytes = d["x"].numel() * d["x"].element_size()
        # The roofline of this size: a device-to-device copy (read + write), measured here.
        ts = time_fn(lambda dst=torch.empty_like(d["x"]): dst.copy_(d["x"]), device)
        copy = 2 * nbytes / statistics.median(ts) / 1e9
        emit(dict(kind="copy", dtype=name, shape=list(shape), tensor_mib=nbytes / 2**20, median_s=statistics.median(ts),
                  gb_per_s=copy, reps=len(ts)))
        for case in args.cases.split(","):
            if case == "normal" and dtype != torch.float32:
                continue  # normal draws float32 whatever the dtype: measured in the fp32 pass
            for provider in providers:
                row = dict(kind="op", case=case, provider=provider, dtype=name, shape=list(shape),
                           tensor_mib=nbytes / 2**20, noise=case in NOISY)
                emit(measure_case(row, d, device, copy, bound, t_end - time.perf_counter()))
        d = None
        _inputs.cache_clear()
        if device == "cuda":
            torch.cuda.empty_cache()
    return 0


def measure_case(row: dict, d: dict, device: str, copy: float, bound: dict | None, left: float) -> dict:
    """One case × provider: its row (an op timing against the copy / noise roofline, or why it was skipped or
    failed).  `copy` is this dtype's copy rate in GB/s, `left` the seconds of budget left."""
    case, provider, dtype = row["case"], row["provider"], DTYPES[row["dtype"]]
    if left < 1.0:
        return dict(row, kind="skip", reason=f"budget spent ({left:.1f} s left)")
    fn, moved, op = _case(case, provider, d)
    if provider != "torch":
        why = backends_for(op)[provider].why_not(torch.device(device), dtype)
        if why:
            return dict(row, kind="skip", reason=f"{provider}: {why}")
    try:
        ts = time_fn(fn, device, budget_s=min(0.3, max(left / 4, 0.05)))
    except Exception as e:  # out of memory, a kernel error: record it, go on
        if device == "cuda":
            torch.cuda.empty_cache()
        return dict(row, kind="error", error=f"{type(e).__name__}: {e}"[:1500])
    med = statistics.median(ts)
    gbps = moved / med / 1e9
    row.update(median_s=med, reps=len(ts), bytes_moved=moved, gb_per_s=gbps,
               pct_of_copy=100 * gbps / copy, elements_per_s=d["x"].numel() / med)
    if case in NOISY:
        roof = copy * 1e9 / (moved / d["x"].numel())
        if bound:
            roof = min(roof, bound["elements_per_s"])
        row.update(roofline="min(copy, noise issue bound)" if bound else "copy",
                   pct_of_roofline=100 * row["elements_per_s"] / roof,
                   pct_of_bound_1100=bound and 100 * row["elements_per_s"] / bound["elements_per_s_1100"])
    else:
        row.update(roofline="copy", pct_of_roofline=row["pct_of_copy"],
                   target_pct_of_copy=TARGET_PCT_OF_COPY,
                   meets_target=row["pct_of_copy"] >= TARGET_PCT_OF_COPY)
    return row


if __name__ == "__main__":
    raise SystemExit(main())
