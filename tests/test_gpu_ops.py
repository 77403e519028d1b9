"""The GPU lane: compiled Triton and the CUDA kernels against the reference on a CUDA device, fp32 and fp16/bf16,
forward and backward; sync-free stepping; CUDA-graph capture and replay of a step.  Skipped without a GPU.
benchmarks/gpu_check.py runs it first, `-m gpu -v` with FASTPURIFY_AUTOTUNE=1 and a time limit per test: the
verification of the kernels rests on this file alone.  The CPU half of the capture checks is
tests/test_gpu_capture.py (a capture double that raises on what CUDA-graph capture forbids)."""

import os

import pytest
import torch

from fastpurify import ops
from fastpurify.ops.reference.philox import derive_seeds, normal_ref, philox_bits
from tests import op_checks as C
from tests.utils import assert_close_verbose, available_backends_for, backend_dtype_pairs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
DEV = "cuda"
BACKENDS = [b for b in available_backends_for("sampler_step", DEV) if b != "torch"]
REALISTIC, ODD = (64, 3, 32, 32), (3, 3, 17, 23)


def test_gpu_backends_are_available():
    """On a GPU machine both kernel backends must run: a silent skip of either would hide a broken build.
    FASTPURIFY_GPU_EXPECT (benchmarks/gpu_check.py sets it from its build step, e.g. 'triton' where no nvcc could
    build the CUDA kernels, which its report then says) narrows the set expected."""
    expect = set(filter(None, os.environ.get("FASTPURIFY_GPU_EXPECT", "triton,cuda").split(",")))
    assert set(BACKENDS) >= expect, f"available on cuda: {BACKENDS}, expected {sorted(expect)}"
    for op in ("normal", "philox_bits"):
        assert set(available_backends_for(op, DEV)) >= {"torch"} | expect, op


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [REALISTIC, ODD, (2, 1), (1, 1), (1, 1025), (3, 3, 256, 256)])
def test_philox_words_and_normals(backend, shape):
    """Bit-identical words; normals (precise logf/cosf) within the tolerance of tests/test_philox.py."""
    seeds = (derive_seeds(5, torch.arange(shape[0])) - (1 << 62)).to(DEV)
    n = torch.Size(shape[1:]).numel()
    got = ops.philox_bits(seeds, n, step=11, purpose=1, round=3, backend=backend)
    for g, r in zip(got, philox_bits(seeds, n, 11, 1, 3)):
        assert torch.equal(g, r), f"philox_bits[{backend}]: {int((g != r).sum())} words differ"
    z = ops.normal(seeds, shape, step=11, purpose=1, round=3, backend=backend)
    assert z.shape == shape and z.dtype == torch.float32 and z.is_cuda
    assert_close_verbose(z, normal_ref(seeds, shape, step=11, purpose=1, round=3), 2e-6, 2e-6, f"normal[{backend}]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_adjoint_gdmp_and_pgd_start_with_backend_forced(backend):
    C.check_forced_backend_end_to_end(backend, device=DEV)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", C.FAMILIES)
@pytest.mark.parametrize("where", ["mid", "last"])
@pytest.mark.parametrize("shape, K", [(REALISTIC, 0), (ODD, 2), ((2, 3, 64, 64), 1)])
def test_step_forward(backend, family, where, shape, K):
    C.check_step_forward(backend, shape, family, where, clip=family != "vpsde", K=K, device=DEV)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family, clip, K", [("ddpm-fixedsmall", True, 2), ("ddim", True, 0), ("vpsde", False, 3)])
@pytest.mark.parametrize("shape", [REALISTIC, ODD])
def test_step_backward(backend, family, clip, K, shape):
    C.check_step_backward(backend, shape, family, "mid", clip, K, device=DEV)


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_clamp_boundary_and_nan(backend):
    C.check_step_clamp_boundary(backend, device=DEV)


@pytest.mark.parametrize("backend, dtype", [p for p in backend_dtype_pairs("sampler_step", C.LOW, DEV)
                                            if p[0] != "torch"])
@pytest.mark.parametrize("shape", [REALISTIC, ODD])
def test_low_precision(backend, dtype, shape):
    C.check_step_low_precision(backend, dtype, shape, "ddpm-fixedsmall", clip=True, K=2, device=DEV)
    C.check_guidance_low_precision(backend, dtype, 3, shape, device=DEV)
    C.check_diffuse_low_precision(backend, dtype, shape, device=DEV)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [REALISTIC, ODD])
def test_guidance_and_forward_diffuse(backend, shape):
    C.check_guidance_forward_backward(backend, 3, shape, device=DEV)
    C.check_diffuse_forward_backward(backend, shape, device=DEV)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stepping_never_syncs_with_the_host(backend):
    """The row and step word come from a device tensor: ten steps run under sync-debug mode 'error'."""
    x, eps, g, gw, coef, _, seeds = C.step_inputs(REALISTIC, 2, "ddpm-fixedsmall", "mid", device=DEV)
    steps = torch.arange(coef.shape[0], device=DEV)
    ops.sampler_step(x, eps, coef, steps[0], seeds, g, gw, clip=True, backend=backend)  # compile / autotune first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in range(890, 900):
            x = ops.sampler_step(x, eps, coef, steps[k], seeds, g, gw, clip=True, backend=backend)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_captures_in_a_cuda_graph(backend):
    """Capture one step on static buffers; replays with a different k in the device counter match eager steps."""
    x, eps, g, gw, coef, _, seeds = C.step_inputs(REALISTIC, 1, "vpsde", "mid", device=DEV)
    k = torch.zeros((), dtype=torch.int64, device=DEV)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up (Triton compiles and autotunes) outside the capture
        ops.sampler_step(x, eps, coef, k, seeds, g, gw, clip=False, backend=backend)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.sampler_step(x, eps, coef, k, seeds, g, gw, clip=False, backend=backend)
    for row in (3, 150, 3):
        k.fill_(row)
        graph.replay()
        eager = ops.sampler_step(x, eps, coef, torch.tensor(row, device=DEV), seeds, g, gw, clip=False,
                                 backend=backend)
        assert torch.equal(out, eager), f"replay at k={row} differs from eager"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset, kw", C.E2E_CASES, ids=C.E2E_IDS)
def test_purify_agrees_with_torch(backend, preset, kw):
    C.check_purify_agrees(backend, preset, kw, device=DEV, grad=preset in ("ddpm", "diffpure") and "steps" not in kw)
