"""Fused ops × backends (pytest-benchmark; not in the default test run).

    python -m pytest benchmarks/bench_ops.py --benchmark-enable --benchmark-json=benchmarks/results/cpu/bench_ops.json
    python benchmarks/summarize.py benchmarks/results/cpu/bench_ops.json          # table: GB/s and ratios

Cases: normal (the Philox noise alone, float32), forward_diffuse and its backward, sampler_step (plain, guided with
K = 2 terms, backward), guidance_accumulate.  Every case is timed for each backend that can run it here (torch = the
reference: the eager chain of torch ops with the same Philox noise; cpu = C++; triton; cuda), and two eager
baselines are timed in the same run:
  ref_median_s    the torch backend (eager ops, identical result)               → extra_info ratio_vs_torch
  randn_median_s  the same eager chain drawing torch.randn instead of Philox    → extra_info ratio_vs_eager_randn
                  (a floor for eager torch: cheaper noise, but not the per-sample streams the ops need;
                  for `normal`: torch.randn of the same shape alone)
extra_info also has GB/s (bytes every backend must move / median), shape, dtype, versions, threads, load average.

Environment: FASTPURIFY_BENCH_DEVICE (default cuda if available, else cpu), FASTPURIFY_BENCH_DTYPES (default
"fp32"; e.g. "fp32,fp16,bf16" on GPUs), FASTPURIFY_BENCH_COMPILE=1 adds a torch.compile(reference) provider,
FASTPURIFY_BENCH_THREADS=n sets torch's (and the C++ ops') CPU threads: on a shared machine idle OpenMP workers
stall every eager op by milliseconds, so compare single-threaded numbers there.
Sizes: 64×3×32×32 everywhere; 64×3×256×256 on GPUs, 8×3×256×256 on the CPU (the reference takes seconds there).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from functools import lru_cache

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder: _meta.py
import _meta  # noqa: E402

import fastpurify
from fastpurify import ops
from fastpurify.ops.reference.forward_diffusion import forward_diffuse_bwd_ref, forward_diffuse_ref
from fastpurify.ops.reference.philox import STEP, normal_ref
from fastpurify.ops.reference.sampler_step import guidance_accumulate_ref, sampler_step_bwd_ref, sampler_step_ref
from fastpurify.ops.registry import backends_for

DEVICE = os.environ.get("FASTPURIFY_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BENCH_DTYPES = [DTYPES[d] for d in os.environ.get("FASTPURIFY_BENCH_DTYPES", "fp32").split(",")]
SHAPES = [(64, 3, 32, 32), (64, 3, 256, 256) if DEVICE == "cuda" else (8, 3, 256, 256)]
PROVIDERS = ["torch", "cpu", "triton", "cuda"] + (["compiled"] if os.environ.get("FASTPURIFY_BENCH_COMPILE") else [])
CASES = ["normal", "forward_diffuse", "forward_diffuse_bwd", "sampler_step", "sampler_step_guided", "sampler_step_bwd",
         "guidance_accumulate"]
K = 2  # guidance terms in the guided cases
if os.environ.get("FASTPURIFY_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["FASTPURIFY_BENCH_THREADS"]))


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@lru_cache(maxsize=1)
def _inputs(shape, dtype):
    g = torch.Generator().manual_seed(0)
    mk = (lambda *s: torch.randn(*s, generator=g).to(DEVICE, dtype))  # noqa: E731
    acc = ops.acc_dtype(dtype)
    coef = torch.rand(10, 7, generator=g).to(DEVICE, acc)
    coef[:, 2] *= 0.1
    B = shape[0]
    return dict(x=mk(*shape), eps=mk(*shape), go=mk(*shape), g=mk(K, *shape), gw=torch.rand(K, B).to(DEVICE, acc),
                coef=coef, k=torch.tensor(3, device=DEVICE), seeds=torch.arange(B, device=DEVICE) * 7919,
                a=torch.rand(1000).to(DEVICE), s=torch.rand(1000).to(DEVICE),
                t=torch.randint(0, 1000, (B,), generator=g).to(DEVICE))


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
    if case in ("sampler_step", "sampler_step_guided"):
        fn = f("sampler_step")["fwd"] if f else sampler_step_ref
        g, gw = (d["g"], d["gw"]) if case.endswith("guided") else (None, None)
        moved = (3 + (K if g is not None else 0)) * n * es
        return (lambda: fn(d["x"], d["eps"], g, gw, d["coef"], d["k"], d["seeds"], True, STEP, 0)), moved, \
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
        ratio_vs_eager_randn=(randn_s / med) if randn_s else None, torch=torch.__version__,
        triton=_triton_version(), fastpurify=fastpurify.__version__, commit=_meta.commit(),
        threads=torch.get_num_threads(), loadavg_1min=load)


def _triton_version():
    try:
        import triton

        return triton.__version__
    except ImportError:
        return None
