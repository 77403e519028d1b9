"""purify + gradient: throughput and peak memory of every gradient mode, with ratios to plain autograd in one run.

    python benchmarks/bench_grad.py                      # both models → benchmarks/results/cpu/bench_grad.json
    python benchmarks/bench_grad.py --models digits --threads 1

Each (model, mode) runs in its own fresh subprocess, so one mode's heap never hides another's peak:
  - warm-up: the measured call once (thread pools, allocator, lazy imports);
  - peak memory: malloc_trim, reset the peak RSS (/proc/self/clear_refs 5), one call; reported as the peak RSS of
    the process (`peak_rss_mib`, what a user's machine must hold) and above the loaded model and inputs
    (`peak_above_base_mib`, what the purification itself adds);
  - autograd-held bytes: the tensors the graph keeps for backward (`saved_mib`, exact, unique storages);
  - time: median of --reps calls; images/s = batch / time.
A call is forward diffusion + every sampler step + (except 'forward') the classifier-free loss (out·w).sum() and
its gradient w.r.t. the input.  'forward' is purification under no_grad, the memory baseline.

Models: the embedded digits DDPM (16×16, preset 'diffpure': VP-SDE t* = 0.1, dt 1e-3 → 100 steps, batch 32) and
the 35.7M-parameter DDPM CIFAR-10 UNet shape (random weights, 32×32, VP-SDE t* = 0.1 in 5 steps, batch 2).
The surrogate for 'surrogate' is the same sampler with 4× fewer steps.  CPU runs share the machine: the load
average is recorded with every row; compare only within one run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder: _meta.py
import _meta  # noqa: E402

MODES = ("forward", "autograd", "full", "adjoint", "surrogate", "bpda")
MODELS = {
    # name: (preset, steps override, batch, timed reps)
    "digits": ("diffpure", None, 32, 3),
    "ddpm-cifar10": ("diffpure-cifar10", 5, 2, 2),
}


def _rss(key: str) -> float:
    return int(re.search(rf"{key}:\s+(\d+)", Path("/proc/self/status").read_text())[1]) / 1024


def _build(name: str):
    import torch

    from fastpurify.zoo import digits

    if name == "digits":
        return digits().diffusion
    from fastpurify.models.ddpm_model import DDPM_CIFAR10, DDPMModel
    from fastpurify.models.pretrained import PretrainedDiffusion

    torch.manual_seed(0)
    return PretrainedDiffusion(DDPMModel(**DDPM_CIFAR10).eval().requires_grad_(False), image_size=32, channels=3,
                               time_input="index", name=name)


def child(name: str, mode: str, threads: int) -> dict:
    """One (model, mode) measurement, in this process."""
    import torch

    from fastpurify import Purifier
    from fastpurify.grad import saved_bytes

    torch.set_num_threads(threads)
    preset, steps, batch, reps = MODELS[name]
    model = _build(name)
    grad = "full" if mode == "forward" else mode
    sur = {"steps": max(1, (steps or Purifier(model, preset).config.nfe) // 4)} if mode == "surrogate" else None
    pur = Purifier(model, preset, steps=steps, grad=grad, surrogate=sur)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, model.channels, model.image_size, model.image_size, generator=g)
    w = torch.randn(x.shape, generator=g)

    def call():
        if mode == "forward":
            with torch.no_grad():
                return pur(x, seed=0)
        xr = x.clone().requires_grad_(True)
        (gx,) = torch.autograd.grad((pur(xr, seed=0) * w).sum(), xr)
        return gx

    call()  # warm-up
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = _rss("VmRSS")
    call()
    peak = _rss("VmHWM")
    if mode == "forward":
        saved = 0
    else:
        xr = x.clone().requires_grad_(True)
        saved = saved_bytes(lambda: pur(xr, seed=0))[1]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return dict(model=name, mode=mode, preset=preset, nfe=pur.config.nfe, batch=batch, image=list(x.shape[1:]),
                params=sum(p.numel() for p in model.parameters()), s_per_call=med, times=times,
                images_per_s=batch / med, peak_rss_mib=peak, peak_above_base_mib=peak - base,
                saved_mib=saved / 2**20, threads=threads, loadavg=_meta.loadavg(),
                grad_config=pur.grad_config() if mode != "forward" else None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (1: the machine is shared)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu" / "bench_grad.json")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(*a.child, a.threads)))
        return 0
    rows = []
    for name in a.models.split(","):
        for mode in a.modes.split(","):
            r = subprocess.run([sys.executable, __file__, "--child", name, mode, "--threads", str(a.threads)],
                               capture_output=True, text=True, check=False)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            if r.returncode or not line:
                raise RuntimeError(f"{name}/{mode} failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(line[0][7:]))
            x = rows[-1]
            print(f"{name:13s} {mode:9s} {x['s_per_call']:8.3f} s  {x['images_per_s']:7.2f} img/s  peak RSS "
                  f"{x['peak_rss_mib']:8.1f} MiB (+{x['peak_above_base_mib']:7.1f})  saved {x['saved_mib']:8.2f} MiB  "
                  f"load {x['loadavg']:.2f}", flush=True)
    # Ratios within this run: every mode against plain autograd, and memory against forward-only purification.
    for name in a.models.split(","):
        mine = {r["mode"]: r for r in rows if r["model"] == name}
        ref, fwd = mine.get("autograd"), mine.get("forward")
        for r in mine.values():
            if ref:
                r["speedup_vs_autograd"] = ref["s_per_call"] / r["s_per_call"]
                r["peak_rss_vs_autograd"] = r["peak_rss_mib"] / ref["peak_rss_mib"]
                r["peak_above_base_vs_autograd"] = r["peak_above_base_mib"] / max(ref["peak_above_base_mib"], 1e-9)
            if fwd:
                r["peak_rss_vs_forward"] = r["peak_rss_mib"] / fwd["peak_rss_mib"]
                r["peak_above_base_vs_forward"] = r["peak_above_base_mib"] / max(fwd["peak_above_base_mib"], 1e-9)
    commit = _meta.commit()
    import torch

    import fastpurify

    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"benchmark": "bench_grad", "commit": commit, "torch": torch.__version__,
                                 "fastpurify": fastpurify.__version__, "python": platform.python_version(),
                                 "device": "cpu", "rows": rows}, indent=2) + "\n")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
