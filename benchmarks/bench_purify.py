"""Purification and its exact `full` gradient, eager fp32 against the fast paths, in one run (pytest-benchmark).

    FASTPURIFY_BENCH_THREADS=1 python -m pytest benchmarks/bench_purify.py --benchmark-enable -m "slow or not slow" \
        --benchmark-json benchmarks/results/cpu/bench_purify.json

Rows: model × mode (purify = no gradient; full = value + the exact input gradient of ⟨w, purified⟩, grad='full')
× variant.  Every variant runs the same images and per-sample seeds as `eager-fp32`, measured in the same process:
  ratio_vs_eager_fp32   eager fp32 median / this median (> 1: faster)
  value_max_abs_diff    max |Δ| of the purified images against eager fp32; grad_rel_err ‖g − g_fp32‖/‖g_fp32‖
                        (checked against the stated tolerance `fastpurify.models.fast.TOLERANCE`; a miss fails)
  first_call_s          the first call (compile / capture + one run), apart from the timed steady state
  images_per_s, s_per_step, gflop_per_s (FLOPs counted by torch.utils.flop_counter), sgemm_gflop_per_s (this
  machine's fp32 matmul rate, measured in the same run: the roofline a convolution network can approach)
  profile_top           the top ops by self time of one call (torch.profiler), where FASTPURIFY_BENCH_PROFILE=1
Models (random weights, real architectures): the embedded digits DDPM (0.40 M, 16×16, batch 32), NCSN++ at reduced
width (nf 32, one block per level: 1.77 M, 32×32, batch 8) and the full DiffPure NCSN++ (106.6 M, batch 1; marked
slow).  Preset diffpure(-cifar10): VP-SDE Euler–Maruyama from t* = 0.1; on the CPU the NCSN++ rows run fewer steps
than the preset's 100 (FASTPURIFY_BENCH_STEPS; recorded as nfe): every step is one identical network call, so the
ratios do not depend on it and s/image at 100 steps is s_per_step · 100 / batch.

Environment: FASTPURIFY_BENCH_MODELS, _VARIANTS, _MODES (comma lists), _STEPS (model=n,...), _THREADS, _DEVICE
(default cuda if available), _PROFILE.  CPU runs share the machine: compare only within one run (load average
recorded); 1 thread gives the steadiest ratios on a shared 2-core machine.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from functools import lru_cache

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder: _meta.py
import _meta  # noqa: E402

import fastpurify
from fastpurify import Purifier
from fastpurify.models.fast import TOLERANCE, cpu_flags

DEVICE = torch.device(os.environ.get("FASTPURIFY_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu"))
if os.environ.get("FASTPURIFY_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["FASTPURIFY_BENCH_THREADS"]))
CUDA = DEVICE.type == "cuda"

# name: (preset, batch, CPU steps (None: the preset's), rounds, slow)
MODELS = {
    "digits": ("diffpure", 32, None, 3, False),
    "ncsnpp-1.8m": ("diffpure-cifar10", 8, 20, 3, False),
    "ncsnpp-full": ("diffpure-cifar10", 1, 5, 2, True),
}
KEEP_ALL = 1 << 40  # bytes: more than any step count here needs
# name: Purifier options.  Eager fp32 is the reference; graphs only where they can capture (CUDA).
VARIANTS = {
    "eager-fp32": {},
    "eager-fp32-cl": dict(channels_last=True),
    "eager-bf16": dict(precision="bf16"),
    "compiled-fp32": dict(compile=True),
    "compiled-fp32-cl": dict(compile=True, channels_last=True),
    "compiled-bf16-cl": dict(compile=True, precision="bf16", channels_last=True),
    # 'full' keeping every step's activations from the forward pass (grad_memory: no recompute; exact; memory grows
    # with the steps, recorded as kept_bytes).  Purify rows skip these (nothing to keep without a gradient).
    "eager-fp32-keep": dict(grad_memory=KEEP_ALL),
    "compiled-fp32-keep": dict(compile=True, grad_memory=KEEP_ALL),
    "compiled-fp32-cl-keep": dict(compile=True, channels_last=True, grad_memory=KEEP_ALL),
    "graphed-fp32": dict(graphs=True),
    "graphed-bf16": dict(graphs=True, precision="bf16"),
    "compiled-graphed-bf16": dict(compile=True, graphs=True, precision="bf16"),
}
MODES = ("purify", "full")


def _selected(name: str, default) -> list[str]:
    value = os.environ.get(f"FASTPURIFY_BENCH_{name}")
    return value.split(",") if value else list(default)


def _steps_override() -> dict:
    pairs = [p.split("=") for p in os.environ.get("FASTPURIFY_BENCH_STEPS", "").split(",") if p]
    return {k: (None if v in ("", "native") else int(v)) for k, v in pairs}


@lru_cache(maxsize=1)  # one model alive at a time (the full NCSN++ is 0.4 GB)
def _model(name: str):
    from fastpurify.models.ncsnpp import NCSNPP_CIFAR10, NCSNpp
    from fastpurify.models.pretrained import PretrainedDiffusion
    from fastpurify.zoo import digits
    from tests.model_helpers import randomize_

    if name == "digits":
        return digits().diffusion.to(DEVICE)
    cfg = NCSNPP_CIFAR10 if name == "ncsnpp-full" else dict(NCSNPP_CIFAR10, nf=32, num_res_blocks=1)
    # Non-zero random weights everywhere (the published init zeroes some output layers): results are non-trivial.
    net = randomize_(NCSNpp(**cfg))
    return PretrainedDiffusion(net, image_size=32, channels=3, time_input="continuous", name=name).to(DEVICE)


def _sync():
    if CUDA:
        torch.cuda.synchronize()


@lru_cache(maxsize=1)
def _sgemm_gflops() -> float:
    """This machine's fp32 matmul rate with the current threads (median of 5): the roofline for the UNet."""
    n = 4096 if CUDA else 2048
    a, b = torch.randn(n, n, device=DEVICE), torch.randn(n, n, device=DEVICE)
    for _ in range(2):
        a @ b
    ts = []
    for _ in range(5):
        _sync()
        t0 = time.perf_counter()
        a @ b
        _sync()
        ts.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(ts) / 1e9


@lru_cache(maxsize=8)
def _flops_per_step(name: str, mode: str, batch: int) -> int:
    """FLOPs of one sampler step (forward; for 'full' also its recompute and backward), counted on a 1-step run."""
    from benchmarks.gpu_purify import count_flops

    pur = Purifier(_model(name), MODELS[name][0], steps=1, grad="full")
    x, w = _inputs(name, batch)
    return count_flops(lambda: _call(pur, mode, x, w))


def _inputs(name: str, batch: int):
    m = _model(name)
    g = torch.Generator().manual_seed(0)
    shape = (batch, m.channels, m.image_size, m.image_size)
    return torch.rand(shape, generator=g).to(DEVICE), torch.randn(shape, generator=g).to(DEVICE)


def _call(pur, mode, x, w):
    """One purification (mode 'purify') or purification + exact input gradient (mode 'full')."""
    if mode == "purify":
        with torch.no_grad():
            return pur(x, seed=0), None
    xr = x.clone().requires_grad_(True)
    out = pur(xr, seed=0)
    (g,) = torch.autograd.grad((out * w).sum(), xr)
    return out.detach(), g


def _profile_top(fn, n: int = 12) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with profile(activities=acts) as prof:
        fn()
        _sync()
    events = list(prof.key_averages())
    attr = "self_device_time_total" if CUDA else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:n]

    def name(key: str) -> str:  # a compiled graph's self time is the time in its generated (fused) kernels
        return "inductor-generated kernels" if key.startswith("## Call CompiledFxGraph") else key

    return [{"op": name(e.key), "self_ms": round(getattr(e, attr) / 1e3, 2),
             "pct": round(100 * getattr(e, attr) / total, 1), "calls": e.count} for e in top]


@lru_cache(maxsize=1)
def _machine() -> dict:
    if CUDA:
        return dict(device_name=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    flags = cpu_flags()
    return dict(device_name=platform.processor() or "cpu", cpu_count=os.cpu_count(),
                avx512_bf16="avx512_bf16" in flags, amx="amx_tile" in flags, avx512f="avx512f" in flags)


_EAGER: dict = {}  # (model, mode) → (median s, value, gradient) of eager fp32, measured in this run


def _tolerance(opts: dict) -> tuple[float, float] | None:
    if opts.get("precision", "fp32") != "fp32":
        return TOLERANCE[opts["precision"]]
    if opts.get("compile") or opts.get("channels_last"):
        return TOLERANCE["compile"]
    return (0.0, 1e-6) if opts else None  # kept activations: the same kernels on the same values as the recompute


def _cases():
    out = []
    for name in _selected("MODELS", MODELS):
        for mode in _selected("MODES", MODES):
            for variant in _selected("VARIANTS", VARIANTS):
                marks = [pytest.mark.slow] if MODELS[name][4] else []
                out.append(pytest.param(name, mode, variant, id=f"{name}-{mode}-{variant}", marks=marks))
    return out


@pytest.mark.parametrize("name, mode, variant", _cases())
def test_purify(benchmark, name, mode, variant):
    preset, batch, cpu_steps, rounds, _ = MODELS[name]
    opts = VARIANTS[variant]
    if opts.get("grad_memory") and mode != "full":
        pytest.skip("grad_memory applies to the 'full' gradient only")
    if opts.get("graphs") and not CUDA:
        pytest.skip("CUDA graphs need a CUDA device (graphs=True raises on the CPU; the static path is tested)")
    steps = _steps_override().get(name, None if CUDA else cpu_steps)
    model = _model(name)
    x, w = _inputs(name, batch)
    if (name, mode) not in _EAGER and variant != "eager-fp32":
        pytest.skip("run the eager-fp32 row of this model and mode first (it is the reference of the ratios)")
    pur = Purifier(model, preset, steps=steps, grad="full", **opts)

    # First call apart: compile / capture + one run.  Its output is this variant's result (same seeds every call).
    t0 = time.perf_counter()
    value, grad = _call(pur, mode, x, w)
    _sync()
    first = time.perf_counter() - t0

    def run():
        _call(pur, mode, x, w)
        _sync()

    benchmark.pedantic(run, rounds=rounds, warmup_rounds=0, iterations=1)
    # --benchmark-disable (the repository default) runs once, untimed: a smoke test of every row and its accuracy.
    med = benchmark.stats.stats.median if benchmark.stats is not None else first
    if variant == "eager-fp32":
        _EAGER[(name, mode)] = (med, value, grad)
    ref_s, ref_v, ref_g = _EAGER[(name, mode)]
    dv = float((value - ref_v).abs().max())
    dg = None if grad is None else float((grad - ref_g).norm() / ref_g.norm())
    nfe = pur.config.nfe
    flops = _flops_per_step(name, mode, batch) * nfe
    info = dict(model=name, mode=mode, variant=variant, options=opts, preset=preset, nfe=nfe, batch=batch,
                params=sum(p.numel() for p in model.parameters()), device=str(DEVICE), s_per_call=med,
                s_per_step=med / nfe, images_per_s=batch / med, ratio_vs_eager_fp32=ref_s / med, first_call_s=first,
                compile_seconds=pur.grad_config()["speed"].get("compile_seconds"), value_max_abs_diff=dv,
                grad_rel_err=dg, tolerance=_tolerance(opts), gflop_per_call=flops / 1e9, gflop_per_s=flops / med / 1e9,
                sgemm_gflop_per_s=_sgemm_gflops(), precision_support=pur.grad_config()["speed"]["precision_support"],
                graphs=pur.grad_config()["speed"]["graphs"], kept=pur.last_kept, threads=torch.get_num_threads(), torch=torch.__version__,
                fastpurify=fastpurify.__version__, commit=_meta.commit(), loadavg_1min=_meta.loadavg(), **_machine())
    if CUDA:
        info["peak_mem_mib"] = torch.cuda.max_memory_allocated() / 2**20
    if os.environ.get("FASTPURIFY_BENCH_PROFILE"):
        info["profile_top"] = _profile_top(run)
    benchmark.extra_info.update(info)
    tol = _tolerance(opts)
    if tol is not None:
        assert dv <= tol[0] and (dg is None or dg <= tol[1]), \
            f"{variant}: value max |Δ| {dv:.3e}, grad rel {dg} beyond the stated tolerance {tol}"


def table(paths: list[str]) -> str:
    """A markdown table of saved runs: `python benchmarks/bench_purify.py benchmarks/results/cpu/bench_purify_*.json`."""
    import json

    lines = ["| model | mode | variant | s/image at 100 steps | ratio vs eager fp32 | first call s | max abs diff "
             "| grad rel err | GFLOP/s (sgemm) |", "|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        for b in json.load(open(path))["benchmarks"]:
            e = b["extra_info"]
            if "variant" not in e:
                continue
            per_image = e["s_per_step"] * 100 / e["batch"]
            dg = "–" if e["grad_rel_err"] is None else f"{e['grad_rel_err']:.1e}"
            lines.append(f"| {e['model']} | {e['mode']} | {e['variant']} | {per_image:.3g} | "
                         f"{e['ratio_vs_eager_fp32']:.2f}× | {e['first_call_s']:.0f} | {e['value_max_abs_diff']:.1e} | "
                         f"{dg} | {e['gflop_per_s']:.0f} ({e['sgemm_gflop_per_s']:.0f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(table(sys.argv[1:]))
