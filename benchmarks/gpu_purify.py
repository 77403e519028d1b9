"""The purification matrices of benchmarks/gpu_check.py: eager vs graphed vs compiled, fp32 vs bf16, purify and the
exact `full` gradient, our kernels vs the reference, on NCSN++ CIFAR-10 and ADM-256 (real architectures, random
weights).  One JSON line per configuration, appended as soon as it is measured, so a run cut short by its time limit
keeps what it measured (and a "start" line says what it was doing when it was cut).

    python benchmarks/gpu_purify.py --plan ncsnpp --out rows.jsonl --budget 50
    python benchmarks/gpu_purify.py --plan compiled --out rows.jsonl --budget 25    # inductor: its own step, last
    python benchmarks/gpu_purify.py --plan ncsnpp --out rows.jsonl --dry-run       # tiny sizes on the CPU

A configuration is "variant@backend": the variant sets the Purifier's speed options (VARIANTS), the backend the op
backend it runs with, forced with Purifier(backend=...): `torch` (the reference: what CUDA runs automatically until
gpu_check has verified the kernels there), `cuda` or `triton` (ours).  Every row records the backend it asked for
and the one the registry resolved (`op_backend`, `op_backend_used`) and the automatic choice (`op_backend_auto`).
Each row: the median seconds per call over a few calls after a first call (compile / capture, timed apart), per-step
seconds, images/s, the maximum difference of the purified images and the relative error of the input gradient
against the plan's reference row (eager fp32 on the reference backend: REF) on the same images and seeds, peak
memory, and the FLOPs of one step (torch.utils.flop_counter formulas, counted at batch 1 and scaled) so gpu_check
can compute the model-FLOPs utilisation.  Each configuration is its own try-block (an out-of-memory or a capture
error is recorded with its message and the rest go on), its graphs are freed before the next one
(GraphPlan.clear(): they hold reference cycles and memory pools), and a configuration that would not fit in the time
left is skipped and says so.

Dry run (CPU): tiny models and batches; `cuda`/`triton` are stood in for by the C++ `cpu` backend (recorded), and a
graphed variant really captures and replays, through the capture double of tests/capture_double.py (which raises on
what CUDA-graph capture forbids): row["graphs"]["capture"] == "simulated (capture double)".
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(1, str(ROOT / "benchmarks"))
import _meta  # noqa: E402

# name: Purifier options.  On the CPU (dry run) graphs=True runs under the capture double.
VARIANTS = {
    "eager-fp32": {},
    "eager-bf16": dict(precision="bf16"),
    "graphed-fp32": dict(graphs=True),
    "graphed-bf16": dict(graphs=True, precision="bf16"),
    "compiled-bf16": dict(compile=True, precision="bf16"),
    "compiled-graphed-bf16": dict(compile=True, graphs=True, precision="bf16"),
}
REF = "eager-fp32@torch"  # every plan entry starts with it: the accuracy reference and the ratios' denominator
# Priority order: the target configuration (NCSN++ batch 64) first, ours beside the reference.
PLANS = {
    "ncsnpp": [(64, "purify", [REF, "eager-fp32@cuda", "graphed-fp32@cuda", "eager-bf16@cuda", "graphed-bf16@cuda",
                               "graphed-bf16@triton", "graphed-bf16@torch"]),
               (64, "full", [REF, "eager-fp32@cuda", "graphed-fp32@cuda", "graphed-bf16@cuda", "graphed-bf16@torch",
                             "eager-bf16@cuda"]),
               (1, "purify", [REF, "graphed-bf16@cuda", "graphed-bf16@torch"]),
               (256, "purify", [REF, "graphed-bf16@cuda"]),
               (1, "full", [REF, "graphed-bf16@cuda"]),
               (16, "purify", [REF, "graphed-bf16@cuda"]),
               (256, "full", [REF, "graphed-bf16@cuda"])],
    "adm": [(1, "purify", [REF, "graphed-bf16@cuda", "eager-bf16@cuda"]), (4, "purify", [REF, "graphed-bf16@cuda"]),
            (1, "full", [REF, "graphed-bf16@cuda"])],
    # inductor compiles minutes per graph on big networks: its own step, run last, so it cannot eat the rows above.
    "compiled": [(64, "purify", [REF, "compiled-graphed-bf16@cuda", "compiled-bf16@cuda"]),
                 (64, "full", [REF, "compiled-graphed-bf16@cuda"])],
}
# Dry runs (CPU, tiny models) check the script, not speed: one entry of each kind, graphed ones captured by the double.
DRY_PLANS = {
    "ncsnpp": [(64, "purify", [REF, "graphed-fp32@cuda", "eager-bf16@cuda", "graphed-bf16@torch"]),
               (64, "full", [REF, "graphed-fp32@cuda", "graphed-bf16@cuda"])],
    "adm": [(1, "purify", [REF, "graphed-bf16@cuda"]), (1, "full", [REF, "graphed-bf16@cuda"])],
    "compiled": [(64, "purify", [REF, "compiled-graphed-bf16@cuda"]),
                 (64, "full", [REF, "compiled-graphed-bf16@cuda"])],
}
PLAN_MODEL = {"ncsnpp": "ncsnpp", "adm": "adm", "compiled": "ncsnpp"}
DRY_BATCHES = {64: 2, 1: 1, 16: 2, 256: 3, 8: 2, 4: 2}


def _randomize_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero random weights in place, on the weights' device (the published inits zero some output layers):
    fan-in-scaled normals for weights, 1 ± 0.1 for norm scales, small normals for the other 1-D tensors."""
    g = torch.Generator(device=next(net.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)) and name == "weight":
                    p.normal_(1.0, 0.1, generator=g)
                elif p.dim() > 1:
                    fan_in = p.shape[0] if name == "W" else p[0].numel()  # NIN's W is (in, out)
                    p.normal_(0.0, 0.8 / fan_in ** 0.5, generator=g)
                else:
                    p.normal_(0.0, 0.1, generator=g)
    return net.eval().requires_grad_(False)


def build(model: str, dry: bool, device: torch.device):
    """(denoiser, preset, steps), built on the device (no host-side init of hundreds of millions of weights)."""
    from fastpurify.models.adm import ADM_256_UNCOND, ADMUNet
    from fastpurify.models.ncsnpp import NCSNPP_CIFAR10, NCSNpp
    from fastpurify.models.pretrained import PretrainedDiffusion
    from tests.model_helpers import TINY_ADM, TINY_NCSNPP

    with torch.device(device):
        if model == "ncsnpp":
            net = _randomize_(NCSNpp(**(TINY_NCSNPP if dry else NCSNPP_CIFAR10)))
            size, time_input, preset, steps = (8 if dry else 32), "continuous", "diffpure-cifar10", (2 if dry else 10)
        else:
            net = _randomize_(ADMUNet(**(TINY_ADM if dry else ADM_256_UNCOND)))
            size, time_input, preset, steps = (16 if dry else 256), "index", "diffpure-imagenet", (2 if dry else 4)
    den = PretrainedDiffusion(net, image_size=size, channels=3, time_input=time_input, name=model).to(device)
    return den, preset, steps


def count_flops(fn) -> int:
    """FLOPs of fn() by torch.utils.flop_counter's formulas (a dispatch mode: no module hooks, so autograd.grad
    inside the 'full' recompute works)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Count.total += formula(*args, **(kwargs or {}), out_val=out)
            return out

    with Count():
        fn()
    return Count.total


def call(pur, mode: str, x: torch.Tensor, w: torch.Tensor):
    if mode == "purify":
        with torch.no_grad():
            return pur(x, seed=0), None
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((pur(xr, seed=0) * w).sum(), xr)
    return None, g


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def split(config: str) -> tuple[str, str]:
    """'graphed-bf16@cuda' → ('graphed-bf16', 'cuda')."""
    variant, _, backend = config.partition("@")
    if variant not in VARIANTS or backend not in ("torch", "cuda", "triton"):
        raise ValueError(f"bad configuration {config!r}: variant@backend with a variant of {sorted(VARIANTS)} and a "
                         "backend of torch/cuda/triton")
    return variant, backend


def op_backends(backend: str, device: torch.device, dry: bool) -> dict:
    """The backend to force (a dry run stands the C++ `cpu` backend in for ours), what the registry resolves it to,
    and what the automatic choice would be, for the sampler step in fp32 (the state is fp32 in every variant)."""
    from fastpurify.ops.registry import select

    forced = "cpu" if dry and backend != "torch" else backend
    used = select("sampler_step", device, torch.float32, forced).name
    auto = select("sampler_step", device, torch.float32, None).name if not os.environ.get("FASTPURIFY_BACKEND") \
        else f"FASTPURIFY_BACKEND={os.environ['FASTPURIFY_BACKEND']}"
    return dict(op_backend=backend, op_backend_forced=forced, op_backend_used=used, op_backend_auto=auto)


def measure(den, preset, steps, batch, mode, config, device, reps, ref, dry):
    """One configuration → a row (times, accuracy against `ref` = the reference row's (value, grad), memory)."""
    from fastpurify import Purifier

    variant, backend = split(config)
    opts = dict(VARIANTS[variant])
    backends = op_backends(backend, device, dry)
    double = contextlib.nullcontext()
    simulate = bool(opts.get("graphs")) and device.type != "cuda"
    if simulate:  # the CPU stand-in for capture: static buffers, captured and replayed by the capture double
        from tests.capture_double import CaptureDouble

        opts["graphs"] = "static"
        double = CaptureDouble()
    g = torch.Generator().manual_seed(batch)
    shape = (batch, den.channels, den.image_size, den.image_size)
    x, w = torch.rand(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    pur = None
    try:
        with double as cap:
            pur = Purifier(den, preset, steps=steps, grad="full", backend=backends["op_backend_forced"], **opts)
            if simulate:
                cap.capture(pur)
            value, grad, first, times = _timed_calls(pur, mode, x, w, device, reps)
            graphs = pur.grad_config()["speed"]["graphs"]
            if simulate:
                graphs = dict(graphs, capture="simulated (capture double)", captures=cap.captures,
                              replays=cap.replays)
        med, nfe = statistics.median(times), pur.config.nfe
        row = dict(batch=batch, mode=mode, config=config, variant=variant, options=VARIANTS[variant], **backends,
                   nfe=nfe, first_call_s=first, s_per_call=med, times=times, s_per_step=med / nfe,
                   images_per_s=batch / med, graphs=graphs,
                   compile_seconds=pur.grad_config()["speed"].get("compile_seconds"))
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        if ref is not None:
            _add_accuracy(row, ref, value, grad)
        return row, (value, grad)
    finally:
        if pur is not None:
            pur.graphs.clear()  # graphs, pools and static buffers now, not at some later garbage collection
        del pur
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _timed_calls(pur, mode, x, w, device, reps):
    """The first call (its result and time), then `reps` timed calls: (value, grad, first_s, times)."""
    t0 = time.perf_counter()
    value, grad = call(pur, mode, x, w)
    _sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call(pur, mode, x, w)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return value, grad, first, times


def _add_accuracy(row: dict, ref, value, grad) -> None:
    """Differences from the reference row's (value, grad)."""
    rv, rg = ref
    if value is not None:
        row["value_max_abs_diff"] = float((value - rv).abs().max())
    if grad is not None:
        row["grad_rel_err"] = float((grad - rg).norm() / rg.norm())


def flops_per_step(den, preset, mode, device) -> int:
    """FLOPs of one sampler step of one image (for 'full': its forward, recompute and backward), counted on a
    1-step run at batch 1 (every layer's cost is linear in the batch)."""
    from fastpurify import Purifier

    shape = (1, den.channels, den.image_size, den.image_size)
    x, w = torch.rand(shape, device=device), torch.randn(shape, device=device)
    one = Purifier(den, preset, steps=1, grad="full", backend="torch")
    return count_flops(lambda: call(one, mode, x, w))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", choices=sorted(PLANS), required=True)
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, appended one per configuration")
    ap.add_argument("--budget", type=float, default=50.0, help="seconds for the whole matrix")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dry-run", action="store_true", help="tiny models and batches on the CPU")
    args = ap.parse_args(argv)
    t_end = time.perf_counter() + args.budget
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    model = PLAN_MODEL[args.plan]
    if args.dry_run:
        from fastpurify.models import fast

        fast.COMPILE_BACKEND = "aot_eager"  # traces like inductor, no code generation: seconds instead of minutes
    if device.type == "cuda":  # eager "fp32" as PyTorch ships it (cuDNN may use TF32); recorded with every row
        tf32 = dict(cudnn_tf32=torch.backends.cudnn.allow_tf32, matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        tf32 = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    if args.dry_run:  # tiny tensors: on a shared CPU idle OpenMP workers stall every op by milliseconds
        torch.set_num_threads(1)
    try:
        return _matrix(args, model, device, tf32, t_end)
    finally:
        torch.set_num_threads(threads)


def _matrix(args, model: str, device: torch.device, tf32: dict, t_end: float) -> int:
    hang, emitted = _meta.hang_after(), [0]

    def emit(row: dict) -> None:
        row = dict(row, plan=args.plan, model=model, device=str(device), dry_run=args.dry_run, **tf32)
        _meta.append_jsonl(args.out, row)
        print(json.dumps(row)[:300], flush=True)
        if row["kind"] in ("row", "error"):
            emitted[0] += 1
            if hang is not None and emitted[0] >= hang:  # a simulated timeout (gpu_check --simulate-timeout)
                _meta.hang(args.plan, args.out)

    t0 = time.perf_counter()
    den, preset, steps = build(model, args.dry_run, device)
    emit(dict(kind="model", params=sum(p.numel() for p in den.parameters()), preset=preset, steps=steps,
              build_s=time.perf_counter() - t0))
    refs, cost, flops = {}, {}, {}  # (batch, mode) → reference result / seconds of its call; mode → FLOPs per image
    for batch, mode, configs in (DRY_PLANS if args.dry_run else PLANS)[args.plan]:
        batch = DRY_BATCHES[batch] if args.dry_run else batch
        for config in configs:
            left = t_end - time.perf_counter()
            # Expected cost: (reps + 1) reference calls (+ two warm-ups and a capture when graphed), plus the compile
            # time once one has been measured.  The first compiled configuration always starts: if the step's limit
            # cuts it, its "start" line and the time it had are the measurement (a lower bound on the compile time).
            base = cost.get((batch, mode), 1.0)
            need = (args.reps + 1 + (3 if "graphed" in config else 0)) * base
            if "compiled" in config and not args.dry_run:
                need += cost.get("compile", 0.0)
            if left < need:
                emit(dict(kind="skip", batch=batch, mode=mode, config=config,
                          reason=f"{left:.0f} s left, needs ≈ {need:.0f} s"))
                continue
            emit(dict(kind="start", batch=batch, mode=mode, config=config, left_s=left))
            try:
                row, result = measure(den, preset, steps, batch, mode, config, device, args.reps,
                                      refs.get((batch, mode)), args.dry_run)
                if config == REF:
                    refs[(batch, mode)], cost[(batch, mode)] = result, row["s_per_call"]
                    if mode not in flops:
                        flops[mode] = flops_per_step(den, preset, mode, device)
                    row["flops_per_step"] = flops[mode] * batch
                if row.get("compile_seconds"):
                    cost["compile"] = max(row["compile_seconds"].values())
                emit(dict(kind="row", **row))
            except Exception as e:  # out of memory, a capture error, …: record it, go on
                emit(dict(kind="error", batch=batch, mode=mode, config=config,
                          error=f"{type(e).__name__}: {e}"[:2000], trace=traceback.format_exc()[-2000:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
