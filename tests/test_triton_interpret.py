"""The Triton kernels on the CPU, in Triton's interpreter: the same checks as the other lanes, backend 'triton'.

    TRITON_INTERPRET=1 python -m pytest -m interpret tests/test_triton_interpret.py

TRITON_INTERPRET must be set before Python starts (@triton.jit decides at decoration time); the default lane
deselects this module (pyproject addopts).  The interpreter runs each program with numpy, so shapes stay small
except one realistic case per op.
"""

import pytest
import torch

from fastpurify import ops
from fastpurify.ops import _ext
from fastpurify.ops.reference.philox import derive_seeds, normal_ref, philox_bits
from fastpurify.ops.registry import backends_for
from tests import op_checks as C
from tests.utils import assert_close_verbose, one_torch_thread  # noqa: F401  (fixture)

# One torch thread: the interpreter runs kernels as Python on the main thread, and torch's idle OpenMP workers
# spinning beside it made this lane 6× slower on a 2-core machine (tests/utils.one_torch_thread).
pytestmark = [pytest.mark.interpret, pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.skipif(not _ext.triton_interpret() or _ext.triton_error() is not None,
                                 reason="needs TRITON_INTERPRET=1 set before Python starts, and triton")]
B = "triton"
REALISTIC, ODD = (64, 3, 32, 32), (3, 3, 17, 23)


def test_triton_declares_cpu_under_the_interpreter():
    for op in ("forward_diffuse", "sampler_step", "guidance_accumulate", "normal", "philox_bits"):
        assert backends_for(op)[B].why_not(torch.device("cpu"), torch.float32) is None


@pytest.mark.parametrize("family", C.FAMILIES)
@pytest.mark.parametrize("where", ["mid", "last"])
@pytest.mark.parametrize("K", [0, 2])
def test_step_forward(family, where, K):
    C.check_step_forward(B, ODD, family, where, clip=family != "vpsde", K=K)


def test_step_forward_realistic():
    C.check_step_forward(B, REALISTIC, "ddpm-fixedsmall", "mid", clip=True, K=1)


@pytest.mark.parametrize("family, clip, K", [("ddpm-fixedsmall", True, 2), ("ddpm-fixedlarge", False, 0),
                                             ("ddim", True, 0), ("vpsde", False, 2)])
def test_step_backward(family, clip, K):
    C.check_step_backward(B, ODD, family, "mid", clip, K)


def test_step_backward_realistic():
    C.check_step_backward(B, REALISTIC, "ddim", "mid", True, 0)


def test_step_clamp_boundary_and_nan():
    C.check_step_clamp_boundary(B)


@pytest.mark.parametrize("dtype", C.LOW)
def test_low_precision(dtype):
    C.check_step_low_precision(B, dtype, ODD, "ddpm-fixedsmall", clip=True, K=2)
    C.check_guidance_low_precision(B, dtype, 3, ODD)
    C.check_diffuse_low_precision(B, dtype, ODD)


@pytest.mark.parametrize("K, shape", [(1, REALISTIC), (3, ODD)])
def test_guidance_accumulate(K, shape):
    C.check_guidance_forward_backward(B, K, shape)


@pytest.mark.parametrize("shape", [REALISTIC, ODD])
def test_forward_diffuse(shape):
    C.check_diffuse_forward_backward(B, shape)


def test_step_k_read_from_the_tensor():
    """Two rows, one launch each: the kernel reads the row and the Philox step word from k, not from a constant."""
    x, eps, _, _, coef, _, seeds = C.step_inputs((2, 1, 5, 7), 0, "vpsde", "mid")
    a = ops.sampler_step(x, eps, coef, torch.tensor(3), seeds, clip=False, backend=B)
    b = ops.sampler_step(x, eps, coef, torch.tensor(4), seeds, clip=False, backend=B)
    ra = ops.sampler_step(x, eps, coef, torch.tensor(3), seeds, clip=False, backend="torch")
    rb = ops.sampler_step(x, eps, coef, torch.tensor(4), seeds, clip=False, backend="torch")
    assert torch.allclose(a, ra, atol=2e-6) and torch.allclose(b, rb, atol=2e-6) and not torch.allclose(a, b)


@pytest.mark.parametrize("preset, kw", C.E2E_CASES, ids=C.E2E_IDS)
def test_purify_agrees_with_torch(preset, kw):
    C.check_purify_agrees(B, preset, kw, grad=preset == "ddpm" and "steps" not in kw)


@pytest.mark.parametrize("shape", [ODD, (2, 1), (1, 1), (1, 1025)])
def test_philox_words_and_normals(shape):
    """Bit-identical words; normals from libdevice-equivalent log/cos within the tolerance of tests/test_philox.py.
    (The realistic size runs through the same philox_normal in test_forward_diffuse.)"""
    seeds = derive_seeds(5, torch.arange(shape[0])) - (1 << 62)
    n = torch.Size(shape[1:]).numel()
    got = ops.philox_bits(seeds, n, step=11, purpose=1, round=3, backend=B)
    for g, r in zip(got, philox_bits(seeds, n, 11, 1, 3)):
        assert torch.equal(g, r), f"philox_bits[triton]: {int((g != r).sum())} words differ"
    z = ops.normal(seeds, shape, step=11, purpose=1, round=3, backend=B)
    assert z.shape == shape and z.dtype == torch.float32
    assert_close_verbose(z, normal_ref(seeds, shape, step=11, purpose=1, round=3), 2e-6, 2e-6, "normal[triton]")


def test_adjoint_gdmp_and_pgd_start_with_triton_forced():
    C.check_forced_backend_end_to_end(B)
