"""The purification matrix of benchmarks/gpu_check.py: eager vs graphed vs compiled, fp32 vs bf16, purify and the
exact `full` gradient, on NCSN++ CIFAR-10 and ADM-256 (real architectures, random weights).  One JSON line per
configuration, appended as soon as it is measured, so a run cut short by its time limit keeps what it measured.

    python benchmarks/gpu_purify.py --model ncsnpp --out rows.jsonl --budget 150
    python benchmarks/gpu_purify.py --model ncsnpp --out rows.jsonl --dry-run       # tiny sizes on the CPU

Each row: the median seconds per call over a few calls after a first call (compile / capture, timed apart), per-step
seconds, images/s, the maximum difference of the purified images and the relative error of the input gradient
against eager fp32 on the same images and seeds, peak memory, and the FLOPs of one step (torch.utils.flop_counter
formulas) so that gpu_check can compute the UNet's model-FLOPs utilisation.  Each configuration is its own
try-block: a failure (out of memory, a capture error) is recorded with its message and the rest go on; a
configuration that would not fit in the time left is skipped and says so.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# name: Purifier options.  On the CPU (dry run) graphs=True becomes 'static': the same buffers without capture.
VARIANTS = {
    "eager-fp32": {},
    "eager-bf16": dict(precision="bf16"),
    "graphed-fp32": dict(graphs=True),
    "graphed-bf16": dict(graphs=True, precision="bf16"),
    "compiled-bf16": dict(compile=True, precision="bf16"),
    "compiled-graphed-bf16": dict(compile=True, graphs=True, precision="bf16"),
}
# Priority order: the target configuration (NCSN++ batch 64) first, compile last (minutes of compile time each).
PLANS = {
    "ncsnpp": [(64, "purify", ["eager-fp32", "graphed-fp32", "eager-bf16", "graphed-bf16"]),
               (64, "full", ["eager-fp32", "graphed-bf16", "graphed-fp32", "eager-bf16"]),
               (1, "purify", ["eager-fp32", "graphed-bf16"]), (16, "purify", ["eager-fp32", "graphed-bf16"]),
               (256, "purify", ["eager-fp32", "graphed-bf16"]),
               (1, "full", ["eager-fp32", "graphed-bf16"]), (16, "full", ["eager-fp32", "graphed-bf16"]),
               (256, "full", ["eager-fp32", "graphed-bf16"]),
               (64, "purify", ["compiled-bf16", "compiled-graphed-bf16"])],
    "adm": [(1, "purify", ["eager-fp32", "graphed-bf16", "eager-bf16"]), (8, "purify", ["eager-fp32", "graphed-bf16"]),
            (1, "full", ["eager-fp32", "graphed-bf16"]), (8, "full", ["eager-fp32", "graphed-bf16"])],
}
DRY_BATCHES = {64: 2, 1: 1, 16: 2, 256: 3, 8: 2}


def build(model: str, dry: bool, device: torch.device):
    """(denoiser, preset, steps) with non-zero random weights (the published inits zero some output layers)."""
    from fastpurify.models.adm import ADM_256_UNCOND, ADMUNet
    from fastpurify.models.ncsnpp import NCSNPP_CIFAR10, NCSNpp
    from fastpurify.models.pretrained import PretrainedDiffusion
    from tests.model_helpers import TINY_ADM, TINY_NCSNPP, randomize_

    if model == "ncsnpp":
        net = randomize_(NCSNpp(**(TINY_NCSNPP if dry else NCSNPP_CIFAR10)))
        size, time_input, preset, steps = (8 if dry else 32), "continuous", "diffpure-cifar10", (2 if dry else 10)
    else:
        net = randomize_(ADMUNet(**(TINY_ADM if dry else ADM_256_UNCOND)))
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


def measure(den, preset, steps, batch, mode, variant, device, reps, ref):
    """One configuration → a row (times, accuracy against `ref` = eager fp32's (value, grad), memory)."""
    from fastpurify import Purifier

    opts = dict(VARIANTS[variant])
    if opts.get("graphs") and device.type != "cuda":
        opts["graphs"] = "static"
    g = torch.Generator().manual_seed(batch)
    shape = (batch, den.channels, den.image_size, den.image_size)
    x, w = torch.rand(shape, generator=g).to(device), torch.randn(shape, generator=g).to(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    pur = Purifier(den, preset, steps=steps, grad="full", **opts)
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
    med, nfe = statistics.median(times), pur.config.nfe
    row = dict(batch=batch, mode=mode, variant=variant, options=VARIANTS[variant], nfe=nfe, first_call_s=first,
               s_per_call=med, times=times, s_per_step=med / nfe, images_per_s=batch / med,
               graphs=pur.grad_config()["speed"]["graphs"],
               compile_seconds=pur.grad_config()["speed"].get("compile_seconds"))
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if ref is not None:
        rv, rg = ref
        if value is not None:
            row["value_max_abs_diff"] = float((value - rv).abs().max())
        if grad is not None:
            row["grad_rel_err"] = float((grad - rg).norm() / rg.norm())
    return row, (value, grad)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(PLANS), required=True)
    ap.add_argument("--out", type=Path, required=True, help="JSON lines, appended one per configuration")
    ap.add_argument("--budget", type=float, default=150.0, help="seconds for the whole matrix")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dry-run", action="store_true", help="tiny models and batches on the CPU")
    args = ap.parse_args(argv)
    t_end = time.perf_counter() + args.budget
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    if args.dry_run:
        from fastpurify.models import fast

        fast.COMPILE_BACKEND = "aot_eager"  # traces like inductor, no code generation: seconds instead of minutes
    if device.type == "cuda":  # eager "fp32" as PyTorch ships it (cuDNN may use TF32); recorded with every row
        tf32 = dict(cudnn_tf32=torch.backends.cudnn.allow_tf32, matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    else:
        tf32 = {}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def emit(row: dict) -> None:
        row.update(model=args.model, device=str(device), dry_run=args.dry_run, **tf32)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row)[:300], flush=True)

    t0 = time.perf_counter()
    den, preset, steps = build(args.model, args.dry_run, device)
    emit(dict(kind="model", params=sum(p.numel() for p in den.parameters()), preset=preset, steps=steps,
              build_s=time.perf_counter() - t0))
    refs, cost = {}, {}  # (batch, mode) → eager fp32 result; (batch, mode) → seconds of the eager row
    for batch, mode, variants in PLANS[args.model]:
        batch = DRY_BATCHES[batch] if args.dry_run else batch
        for variant in variants:
            left = t_end - time.perf_counter()
            # Expected cost: (reps + 1) eager calls, plus minutes of compile for the compiled variants.
            need = (args.reps + 1) * cost.get((batch, mode), 1.0) + (60.0 if "compiled" in variant and
                                                                     not args.dry_run else 0.0)
            if left < need:
                emit(dict(kind="skip", batch=batch, mode=mode, variant=variant,
                          reason=f"{left:.0f} s left, needs ≈ {need:.0f} s"))
                continue
            try:
                row, result = measure(den, preset, steps, batch, mode, variant, device, args.reps,
                                      refs.get((batch, mode)))
                if variant == "eager-fp32":
                    refs[(batch, mode)], cost[(batch, mode)] = result, row["s_per_call"]
                    row["flops_per_step"] = flops_per_step(den, preset, batch, mode, device)
                emit(dict(kind="row", **row))
            except Exception as e:  # out of memory, a capture error, …: record it, go on
                emit(dict(kind="error", batch=batch, mode=mode, variant=variant,
                          error=f"{type(e).__name__}: {e}"[:2000], trace=traceback.format_exc()[-2000:]))
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return 0


def flops_per_step(den, preset, batch, mode, device) -> int:
    """FLOPs of one sampler step (for 'full': its forward, recompute and backward), counted on a 1-step run."""
    from fastpurify import Purifier

    shape = (batch, den.channels, den.image_size, den.image_size)
    x, w = torch.rand(shape, device=device), torch.randn(shape, device=device)
    one = Purifier(den, preset, steps=1, grad="full")
    return count_flops(lambda: call(one, mode, x, w))


if __name__ == "__main__":
    raise SystemExit(main())
