"""Checks of every fused op against its reference, shared by the default lane (torch, C++), the Triton interpreter
lane (tests/test_triton_interpret.py) and the GPU lane (tests/test_gpu_ops.py): one function per property, the
backend, device and shape as arguments.

Tolerances: fp32 kernels match the fp32 reference within atol 2e-6 (Philox words are bit-identical; Box–Muller's
log/cos may differ by about an ulp between libm implementations) and rtol 1e-5 (FMA contraction on GPUs).
fp16/bf16: the kernel's max error against the fp32 reference is at most 2× that of the reference run in the same
low precision (flash-attn's rule).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from functools import lru_cache

import torch

from fastpurify import ops
from fastpurify.ops.reference.forward_diffusion import forward_diffuse_ref
from fastpurify.ops.reference.philox import STEP, derive_seeds
from fastpurify.ops.reference.sampler_step import guidance_accumulate_ref, sampler_step_ref
from fastpurify.samplers.ddim import ddim_coefficients
from fastpurify.samplers.ddpm import ddpm_coefficients
from fastpurify.schedules import get_ddpm_schedule, get_vpsde_schedule, respaced_indices, vpsde_grid
from fastpurify.samplers.vpsde import vpsde_coefficients
from tests.utils import assert_close_verbose

ATOL, RTOL = 2e-6, 1e-5
FAMILIES = ("ddpm-fixedsmall", "ddpm-fixedlarge", "ddim", "vpsde")
LOW = (torch.float16, torch.bfloat16)


@lru_cache(maxsize=None)
def coef_table(family: str) -> torch.Tensor:
    """The real (S, 7) float64 table of a sampler family (what the samplers pass to ops.sampler_step)."""
    sched = get_ddpm_schedule()
    if family.startswith("ddpm-"):
        return ddpm_coefficients(sched, list(range(999, -1, -1)), family[5:])
    if family == "ddim":
        return ddim_coefficients(sched, respaced_indices(1000, 50), eta=0.5)
    if family == "vpsde":
        return vpsde_coefficients(vpsde_grid(0.3), get_vpsde_schedule())
    raise ValueError(family)


def row_of(family: str, where: str) -> int:
    """'mid': a noisy step where the x̂₀ clamp is active for part of N(0, 1.2²) inputs; 'last': the final step
    (DDPM: σ = 0, no noise; DDIM: the jump to ᾱ = 1)."""
    S = coef_table(family).shape[0]
    return {"mid": {"ddim": 45, "vpsde": 150}.get(family, 899), "last": S - 1}[where]


def step_inputs(shape, K: int, family: str, where: str, dtype=torch.float32, device="cpu", seed=0):
    """(x, eps, g, gw, coef, k, seeds) for ops.sampler_step; g/gw None when K = 0.  Seeds include negative ones."""
    gen = torch.Generator().manual_seed(seed)
    x = 1.2 * torch.randn(shape, generator=gen, dtype=torch.float64)
    eps = torch.randn(shape, generator=gen, dtype=torch.float64)
    g = torch.randn((K,) + tuple(shape), generator=gen, dtype=torch.float64) if K else None
    gw = 0.5 + torch.rand((K, shape[0]), generator=gen, dtype=torch.float64) if K else None
    acc = ops.acc_dtype(dtype)

    def cast(v):
        return None if v is None else v.to(device, dtype)

    coef = coef_table(family).to(device, acc)
    k = torch.tensor(row_of(family, where), device=device)
    seeds = (derive_seeds(11, torch.arange(shape[0])) - (1 << 62)).to(device)
    return cast(x), cast(eps), cast(g), None if gw is None else gw.to(device, acc), coef, k, seeds


def _call_step(fn, inp, clip, **kw):
    x, eps, g, gw, coef, k, seeds = inp
    return fn(x, eps, coef, k, seeds, g, gw, clip=clip, **kw)


def _ref_step(x, eps, coef, k, seeds, g=None, gw=None, *, clip):
    return sampler_step_ref(x, eps, g, gw, coef, k, seeds, clip, STEP)


# ---------------------------------------------------------------------------------------------- sampler_step
def check_step_forward(backend, shape, family, where, clip, K, device="cpu"):
    inp = step_inputs(shape, K, family, where, device=device)
    got = _call_step(ops.sampler_step, inp, clip, backend=backend)
    ref = _call_step(_ref_step, inp, clip)
    assert got.shape == tuple(shape) and got.dtype == torch.float32
    assert_close_verbose(got, ref, ATOL, RTOL, f"sampler_step[{backend}, {family}/{where}, clip={clip}, K={K}]")


def check_step_low_precision(backend, dtype, shape, family, clip, K, device="cpu"):
    inp = step_inputs(shape, K, family, "mid", dtype=dtype, device=device)
    up = tuple(v.float() if v is not None and v.is_floating_point() else v for v in inp)
    exact = _call_step(_ref_step, up, clip)                      # fp32 reference on the same rounded inputs
    ref_err = (_call_step(_ref_step, inp, clip).float() - exact).abs().max()   # torch in low precision
    got = _call_step(ops.sampler_step, inp, clip, backend=backend)
    assert got.dtype == dtype
    err = (got.float() - exact).abs().max()
    assert err <= 2 * ref_err, f"sampler_step[{backend}, {dtype}]: error {err:.3e} > 2 × torch's {ref_err:.3e}"


def check_step_backward(backend, shape, family, where, clip, K, device="cpu"):
    """Kernel gradients wrt x, ε̂, g and gw against autograd through the reference (fp32)."""
    x, eps, g, gw, coef, k, seeds = step_inputs(shape, K, family, where, device=device)
    leaves = [v.requires_grad_(True) for v in (x, eps, g, gw) if v is not None]
    w = torch.randn(shape, generator=torch.Generator().manual_seed(5)).to(device)
    out = ops.sampler_step(x, eps, coef, k, seeds, g, gw, clip=clip, backend=backend)
    got = torch.autograd.grad((out * w).sum(), leaves)
    ref = torch.autograd.grad((_ref_step(x, eps, coef, k, seeds, g, gw, clip=clip) * w).sum(), leaves)
    for name, a, b in zip(("x", "eps", "g", "gw"), got, ref):
        # ∂L/∂gw sums over a sample's elements: relative tolerance scaled by that length.
        atol = ATOL * (1 if name != "gw" else x[0].numel() ** 0.5)
        assert_close_verbose(a, b, atol, RTOL, f"∂L/∂{name}[{backend}, {family}/{where}, clip={clip}, K={K}]")


def check_step_clamp_boundary(backend, device="cpu"):
    """x̂₀ exactly on ±1 and just inside/outside: the kernels' masks equal torch's clamp gradient (0 on the edge)."""
    coef = torch.tensor([[1.0, 0.0, 0.7, 0.2, 0.1, 0.0, 0.0]], device=device)  # x̂₀ = x
    x = torch.tensor([[-1.5, -1.0, -0.999, 0.0, 0.999, 1.0, 1.5, float("nan")]], device=device).requires_grad_(True)
    eps = torch.zeros_like(x).requires_grad_(True)
    args = (coef, torch.tensor(0, device=device), torch.zeros(1, dtype=torch.int64, device=device))
    out = ops.sampler_step(x, eps, *args, clip=True, backend=backend)
    ref = _ref_step(x, eps, *args, clip=True)
    assert torch.equal(out.isnan(), ref.isnan()), "NaN must propagate through the clamp like torch.clamp"
    finite = ~ref.isnan()
    assert_close_verbose(out[finite], ref[finite], ATOL, RTOL, f"clamp edge[{backend}]")
    got = torch.autograd.grad(out[finite].sum(), (x, eps))
    exp = torch.autograd.grad(ref[finite].sum(), (x, eps))
    for a, b in zip(got, exp):
        assert torch.equal(a[finite], b[finite]), f"clamp mask[{backend}]: {a} vs {b}"


# ---------------------------------------------------------------------------------------------- guidance
def guidance_inputs(K, shape, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(3)
    g = torch.randn((K,) + tuple(shape), generator=gen).to(device, dtype)
    gw = (torch.rand((K, shape[0]), generator=gen) - 0.3).to(device, ops.acc_dtype(dtype))
    return g, gw


def check_guidance_forward_backward(backend, K, shape, device="cpu"):
    g, gw = guidance_inputs(K, shape, device=device)
    g.requires_grad_(True)
    gw.requires_grad_(True)
    got = ops.guidance_accumulate(g, gw, backend=backend)
    ref = guidance_accumulate_ref(g, gw)
    assert_close_verbose(got, ref, ATOL, RTOL, f"guidance_accumulate[{backend}, K={K}]")
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(8)).to(device)
    a = torch.autograd.grad((got * w).sum(), (g, gw))
    b = torch.autograd.grad((ref * w).sum(), (g, gw))
    assert_close_verbose(a[0], b[0], ATOL, RTOL, f"∂L/∂g[{backend}]")
    assert_close_verbose(a[1], b[1], ATOL * g[0, 0].numel() ** 0.5, RTOL, f"∂L/∂gw[{backend}]")


def check_guidance_low_precision(backend, dtype, K, shape, device="cpu"):
    g, gw = guidance_inputs(K, shape, dtype=dtype, device=device)
    exact = guidance_accumulate_ref(g.float(), gw)
    ref_err = (guidance_accumulate_ref(g, gw).float() - exact).abs().max()
    got = ops.guidance_accumulate(g, gw, backend=backend)
    err = (got.float() - exact).abs().max()
    assert got.dtype == dtype and err <= 2 * ref_err, f"guidance[{backend}, {dtype}]: {err:.3e} vs {ref_err:.3e}"


# ---------------------------------------------------------------------------------------------- forward_diffuse
def diffuse_inputs(shape, dtype=torch.float32, device="cpu", T=1000):
    gen = torch.Generator().manual_seed(1)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)
    a, s = abar.sqrt().float().to(device), (1 - abar).sqrt().float().to(device)
    x0 = (torch.rand(shape, generator=gen) * 2 - 1).to(device, dtype)
    t = torch.randint(0, T, (shape[0],), generator=gen).to(device)
    seeds = (derive_seeds(3, torch.arange(shape[0])) - (1 << 62)).to(device)
    return x0, a, s, t, seeds


def check_diffuse_forward_backward(backend, shape, device="cpu"):
    x0, a, s, t, seeds = diffuse_inputs(shape, device=device)
    x0.requires_grad_(True)
    got = ops.forward_diffuse(x0, a, s, t, seeds, step=2, purpose=0, round=1, backend=backend)
    ref = forward_diffuse_ref(x0, a, s, t, seeds, step=2, purpose=0, round=1)
    assert_close_verbose(got, ref, ATOL, RTOL, f"forward_diffuse[{backend}]")
    w = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(device)
    (gk,) = torch.autograd.grad((got * w).sum(), x0)
    (gr,) = torch.autograd.grad((ref * w).sum(), x0)
    assert_close_verbose(gk, gr, ATOL, RTOL, f"∂L/∂x0[{backend}]")


def check_diffuse_low_precision(backend, dtype, shape, device="cpu"):
    x0, a, s, t, seeds = diffuse_inputs(shape, dtype=dtype, device=device)
    exact = forward_diffuse_ref(x0.float(), a, s, t, seeds)
    ref_err = (forward_diffuse_ref(x0, a, s, t, seeds).float() - exact).abs().max()
    got = ops.forward_diffuse(x0, a, s, t, seeds, backend=backend)
    err = (got.float() - exact).abs().max()
    assert got.dtype == dtype and err <= 2 * ref_err, f"forward_diffuse[{backend}, {dtype}]: {err:.3e} vs {ref_err:.3e}"


# ---------------------------------------------------------------------------------------------- end to end
E2E_CASES = [("diffpure", dict(t_star=0.02)), ("ddpm", dict(t_star=20)), ("ddpm-fixedlarge", dict(t_star=20)),
             ("ddpm", dict(t_star=20, steps=5)), ("ddim", dict(t_star=20, steps=5))]
E2E_IDS = ["vpsde", "ddpm", "ddpm-fixedlarge", "ddim-eta1", "ddim-eta0"]


@lru_cache(maxsize=None)
def tiny_diffusion(device="cpu"):
    from fastpurify.models import EpsDiffusion, SmallUNet

    torch.manual_seed(0)
    return EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).eval().to(device)


def check_purify_agrees(backend, preset, kw, device="cpu", grad=False):
    """purify(x, backend=b) equals backend='torch' for the same per-sample seeds (and so do its input gradients)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    flags = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic)
    # TF32 convolutions would turn 1-ulp differences of a step into 1e-3 ones downstream: exact fp32 for the check.
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    cudnn.deterministic = True
    try:
        _purify_agrees(backend, preset, kw, device, grad)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic = flags


def _purify_agrees(backend, preset, kw, device, grad):
    from fastpurify import purify

    m = tiny_diffusion(device)
    x = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(4)).to(device)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(device)
    outs, grads = [], []
    for b in ("torch", backend):
        xi = x.clone().requires_grad_(grad)
        y = purify(xi, model=m, preset=preset, seed=123, backend=b, **kw)
        outs.append(y.detach())
        if grad:
            grads.append(torch.autograd.grad((y * w).sum(), xi)[0])
    assert_close_verbose(outs[1], outs[0], 2e-5, 1e-5, f"purify[{backend}, {preset} {kw}]")
    if grad:
        assert_close_verbose(grads[1], grads[0], 2e-5, 1e-4, f"∂purify/∂x[{backend}, {preset} {kw}]")
    other = purify(x, model=m, preset=preset, seed=124, backend=backend, **kw)
    assert (other - outs[1]).abs().max() > 1e-3, "another seed must give another purification"


# ---------------------------------------------------------------------------------------------- every draw forced
@contextmanager
def forced_backend(name: str):
    """FASTPURIFY_BACKEND=name for the block: every op call without backend= (PGD's random start, GDMP's target
    noise, the adjoint's regenerated noise) must then run on that backend or raise."""
    old = os.environ.get("FASTPURIFY_BACKEND")
    os.environ["FASTPURIFY_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["FASTPURIFY_BACKEND"]
        else:
            os.environ["FASTPURIFY_BACKEND"] = old


def check_forced_backend_end_to_end(backend, device="cpu"):
    """With FASTPURIFY_BACKEND=backend, the three callers of ops.normal outside the samplers run and agree with
    FASTPURIFY_BACKEND=torch: the VP-SDE adjoint gradient (it regenerates the step noise), a GDMP purification (its
    target noise z′) and PGD's random start."""
    from fastpurify import Purifier
    from fastpurify.attacks.pgd import PGDConfig, random_start
    from fastpurify.methods.guidance import GDMPConfig, GDMPGuidance

    m = tiny_diffusion(device)
    x = torch.rand((3, 1, 8, 8), generator=torch.Generator().manual_seed(4)).to(device)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(6)).to(device)
    adjoint = Purifier(m, "diffpure", t_star=0.01, grad="adjoint")  # 10 steps: the interpreter is slow
    gdmp = Purifier(m, "ddpm", t_star=10, guidance=GDMPGuidance(GDMPConfig(distance="mse", guide_scale=1e4, ptb=38.0)))
    start = PGDConfig(eps=0.1, steps=0, step_size=0.01, random_start=True)
    ids = torch.arange(3, device=device)
    results = {}
    for b in ("torch", backend):
        with forced_backend(b):
            xi = x.clone().requires_grad_(True)
            y = adjoint(xi, seed=123)
            (g,) = torch.autograd.grad((y * w).sum(), xi)
            results[b] = {"adjoint": y.detach(), "adjoint_grad": g, "gdmp": gdmp(x, seed=5),
                          "start": random_start(x, ids, start, run_seed=9)}
    ref, got = results["torch"], results[backend]
    tolerances = {"adjoint": (2e-5, 1e-5), "adjoint_grad": (2e-5, 1e-4), "gdmp": (2e-5, 1e-5), "start": (1e-6, 1e-6)}
    for key, (atol, rtol) in tolerances.items():
        assert_close_verbose(got[key], ref[key], atol, rtol, f"{key}[FASTPURIFY_BACKEND={backend}]")
    assert (got["start"] - x).abs().max() > 0.05, "the random start must move x"
