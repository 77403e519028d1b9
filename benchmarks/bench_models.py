"""One purification step per public architecture, forward and gradient (pytest-benchmark; not in the default run).

    pytest benchmarks/bench_models.py --benchmark-enable \
        --benchmark-json benchmarks/results/cpu/bench_models.json

A step = `Purifier(model, preset, steps=1)`: forward diffusion to t*, one UNet call, one fused sampler step.
'grad' also backpropagates a scalar loss to the input image (full autograd through the UNet).  Full-size
architectures with their default (random) init: the cost does not depend on the weights.

Environment: FASTPURIFY_BENCH_ARCHS (comma list, default all), FASTPURIFY_BENCH_DEVICE (default cuda if available,
else cpu), FASTPURIFY_BENCH_DTYPE (fp32 | fp16 | bf16 torso, default fp32).
extra_info: s_per_step (median), images_per_s, peak_mem_mib (above the loaded model: CUDA max_memory_allocated; CPU
peak RSS after malloc_trim, via /proc/self/clear_refs), batch, params, device, dtype, versions, commit, load average
(CPU runs here share the machine; compare only within one run).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder: _meta.py
import _meta  # noqa: E402

import fastpurify
from fastpurify import Purifier
from fastpurify.models.adm import ADM_256_UNCOND, ADMUNet
from fastpurify.models.ddpm_model import DDPM_CIFAR10, DDPMModel
from fastpurify.models.diffusers_unet import DiffusersUNet2D
from fastpurify.models.ncsnpp import NCSNPP_CIFAR10, NCSNpp
from fastpurify.models.pretrained import PretrainedDiffusion

DDPM_CIFAR10_32 = {"block_out_channels": [128, 256, 256, 256], "layers_per_block": 2, "attention_head_dim": None,
                   "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
                   "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "freq_shift": 1,
                   "flip_sin_to_cos": False, "downsample_padding": 0, "norm_eps": 1e-6, "sample_size": 32}
# name: (builder, image size, time input, preset, batch, timed rounds)
ARCHS = {
    "ncsnpp-cifar10-vp": (lambda: NCSNpp(**NCSNPP_CIFAR10), 32, "continuous", "diffpure-cifar10", 4, 3),
    "adm-256-uncond": (lambda: ADMUNet(**ADM_256_UNCOND), 256, "index", "diffpure-imagenet", 1, 2),
    "ddpm-cifar10": (lambda: DDPMModel(**DDPM_CIFAR10), 32, "index", "ddpm-fixedlarge", 4, 3),
    "diffusers-ddpm-cifar10-32": (lambda: DiffusersUNet2D(DDPM_CIFAR10_32), 32, "index", "ddpm-fixedlarge", 4, 3),
}
SELECTED = [a for a in os.environ.get("FASTPURIFY_BENCH_ARCHS", ",".join(ARCHS)).split(",") if a]
DEVICE = torch.device(os.environ.get("FASTPURIFY_BENCH_DEVICE", "cuda" if torch.cuda.is_available() else "cpu"))
DTYPE = os.environ.get("FASTPURIFY_BENCH_DTYPE", "fp32")


@functools.lru_cache(maxsize=1)  # one full-size model alive at a time (ADM-256 alone is 2.2 GB)
def _model(name: str) -> PretrainedDiffusion:
    build, size, time_input, *_ = ARCHS[name]
    torch.manual_seed(0)
    m = PretrainedDiffusion(build().eval().requires_grad_(False), image_size=size, channels=3, time_input=time_input,
                            name=name).to(DEVICE)
    return m.set_precision(DTYPE) if DTYPE != "fp32" else m


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _peak_mib(fn) -> float:
    """Peak memory (MiB) of one call of fn above what was allocated before it."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20

    def status(key):
        return int(re.search(rf"{key}:\s+(\d+)", open("/proc/self/status").read())[1]) / 1024

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed heap pages first, or the baseline would hide them
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (the peak RSS) to the current RSS
    except OSError:
        return float("nan")
    base = status("VmRSS")
    fn()
    return status("VmHWM") - base


def _info(name: str, model, batch: int) -> dict:
    return dict(arch=name, batch=batch, params=sum(p.numel() for p in model.parameters()), device=str(DEVICE),
                device_name=torch.cuda.get_device_name() if DEVICE.type == "cuda" else "cpu", dtype=DTYPE,
                threads=torch.get_num_threads(), torch=torch.__version__, fastpurify=fastpurify.__version__,
                commit=_meta.commit(), loadavg=_meta.loadavg())


@pytest.mark.parametrize("mode", ["forward", "grad"])
@pytest.mark.parametrize("name", SELECTED)
def test_purification_step(benchmark, name, mode):
    *_, preset, batch, rounds = ARCHS[name]
    model = _model(name)
    pur = Purifier(model, preset, steps=1)
    size = model.image_size
    x = torch.rand(batch, 3, size, size, device=DEVICE)

    def step():
        if mode == "forward":
            with torch.no_grad():
                y = pur(x, seed=0)
        else:
            xr = x.clone().requires_grad_(True)
            y = pur(xr, seed=0)
            y.square().mean().backward()
        _sync()
        return y

    benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=1)
    if benchmark.stats is None:  # --benchmark-disable (the repository default): ran once as a smoke test
        return
    info = _info(name, model, batch)
    med = benchmark.stats.stats.median
    info.update(mode=mode, s_per_step=med, images_per_s=batch / med, peak_mem_mib=_peak_mib(step))
    benchmark.extra_info.update(info)
