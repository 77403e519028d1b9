"""ops.sampler_step and ops.guidance_accumulate: every backend available here against the reference, forward and
backward, on the real coefficient tables of every sampler family; gradcheck in fp64; input errors."""

import pytest
import torch

from fastpurify import ops
from fastpurify.ops.reference.philox import STEP, normal_ref
from fastpurify.ops.reference.sampler_step import guidance_accumulate_ref, sampler_step_ref
from tests import op_checks as C
from tests.utils import available_backends_for, backend_dtype_pairs, one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEP_BACKENDS = available_backends_for("sampler_step")
GUIDE_BACKENDS = available_backends_for("guidance_accumulate")
REALISTIC, ODD = (64, 3, 32, 32), (3, 3, 17, 23)


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("family", C.FAMILIES)
@pytest.mark.parametrize("clip", [False, True])
def test_step_matches_reference_realistic(backend, family, clip):
    C.check_step_forward(backend, REALISTIC, family, "mid", clip, K=0)


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("family", C.FAMILIES)
@pytest.mark.parametrize("where", ["mid", "last"])
@pytest.mark.parametrize("K", [0, 1, 3])
def test_step_matches_reference_odd_shape(backend, family, where, K):
    C.check_step_forward(backend, ODD, family, where, clip=family != "vpsde", K=K)


@pytest.mark.parametrize("backend", STEP_BACKENDS)
@pytest.mark.parametrize("family, clip, K", [("ddpm-fixedsmall", True, 2), ("ddpm-fixedlarge", False, 0),
                                             ("ddim", True, 0), ("vpsde", False, 2)])
@pytest.mark.parametrize("shape", [REALISTIC, ODD])
def test_step_backward_matches_reference(backend, family, clip, K, shape):
    C.check_step_backward(backend, shape, family, "mid", clip, K)


@pytest.mark.parametrize("backend", STEP_BACKENDS)
def test_step_clamp_boundary_and_nan(backend):
    C.check_step_clamp_boundary(backend)


@pytest.mark.parametrize("backend, dtype", backend_dtype_pairs("sampler_step", C.LOW))
def test_step_low_precision(backend, dtype):
    C.check_step_low_precision(backend, dtype, ODD, "ddpm-fixedsmall", clip=True, K=2)


@pytest.mark.parametrize("backend", available_backends_for("sampler_step", dtype=torch.float64))
@pytest.mark.parametrize("clip", [False, True])
def test_step_gradcheck_fp64(backend, clip):
    """Finite differences in float64 against the op's own backward (the reference's formula, or the C++ kernel)."""
    x, eps, g, gw, coef, k, seeds = C.step_inputs((2, 1, 3, 5), 2, "ddpm-fixedsmall", "mid", dtype=torch.float64)
    inputs = tuple(v.requires_grad_(True) for v in (x, eps, g, gw))
    fn = lambda x, e, g, gw: ops.sampler_step(x, e, coef, k, seeds, g, gw, clip=clip, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


def test_reference_gradcheck_fp64():
    """The spec itself, through plain torch autograd (clamp included)."""
    x, eps, g, gw, coef, k, seeds = C.step_inputs((2, 1, 3, 5), 2, "ddim", "mid", dtype=torch.float64)
    inputs = tuple(v.requires_grad_(True) for v in (x, eps, g, gw))
    assert torch.autograd.gradcheck(lambda *a: sampler_step_ref(*a, coef, k, seeds, True, STEP), inputs)


def test_step_noise_is_the_philox_stream_at_step_k():
    """σ·ξ(seed_b, k, STEP) exactly: with a row that keeps only the noise, the op returns σ·normal_ref."""
    coef = torch.zeros(4, 7)
    coef[2, 5] = 1.0
    seeds = torch.tensor([5, -7])
    x = torch.zeros(2, 3, 4)
    out = ops.sampler_step(x, x, coef, torch.tensor(2), seeds, clip=False)
    assert torch.allclose(out, normal_ref(seeds, (2, 3, 4), 2, STEP), atol=2e-6)


def test_step_is_batch_invariant():
    x, eps, g, gw, coef, k, seeds = C.step_inputs((6, 2, 5, 3), 2, "ddpm-fixedlarge", "mid")
    full = ops.sampler_step(x, eps, coef, k, seeds, g, gw, clip=True)
    p = torch.tensor([4, 1, 5])
    part = ops.sampler_step(x[p], eps[p], coef, k, seeds[p], g[:, p], gw[:, p], clip=True)
    assert torch.equal(full[p], part)


def test_step_single_g_equals_weighted_terms():
    """g (B, ...) is one term of weight 1; (K, B, ...) terms with weights sum inside the step."""
    x, eps, g, gw, coef, k, seeds = C.step_inputs((3, 2, 4, 4), 3, "vpsde", "mid")
    one = ops.sampler_step(x, eps, coef, k, seeds, guidance_accumulate_ref(g, gw), clip=False)
    fused = ops.sampler_step(x, eps, coef, k, seeds, g, gw, clip=False)
    assert torch.allclose(one, fused, atol=2e-6)
    unguided = ops.sampler_step(x, eps, coef, k, seeds, clip=False)
    assert (fused - unguided).abs().max() > 1e-4  # s_g ≠ 0 on VP-SDE rows: guidance really moves the step


@pytest.mark.parametrize("backend", GUIDE_BACKENDS)
@pytest.mark.parametrize("K, shape", [(1, REALISTIC), (4, ODD)])
def test_guidance_accumulate_matches_reference(backend, K, shape):
    C.check_guidance_forward_backward(backend, K, shape)


@pytest.mark.parametrize("backend", available_backends_for("guidance_accumulate", dtype=torch.float64))
def test_guidance_accumulate_gradcheck_fp64(backend):
    g, gw = C.guidance_inputs(3, (2, 1, 2, 3))
    inputs = (g.double().requires_grad_(True), gw.double().requires_grad_(True))
    assert torch.autograd.gradcheck(lambda g, w: ops.guidance_accumulate(g, w, backend=backend), inputs)


def test_guidance_weights_clip_per_sample_norms():
    g = torch.randn(2, 3, 1, 4, 4)
    g[1, 0] *= 1e-3  # a term already below the bound is left alone
    gw = ops.guidance_weights(g, torch.tensor([1.0, 0.5]), max_norm=0.5)
    norms = torch.linalg.vector_norm((gw[:, :, None] * g.flatten(2)), dim=2)
    base = torch.tensor([1.0, 0.5])[:, None]
    assert torch.all(norms <= 0.5 * base + 1e-6)
    assert torch.isclose(gw[1, 0], torch.tensor(0.5)) and torch.all(gw[0] < 1.0)
    assert torch.equal(ops.guidance_weights(g, [1.0, 0.5]), base.expand(2, 3))
    gd = g.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: ops.guidance_weights(v, torch.tensor([1.0, 2.0]), 0.5), (gd,))


def test_step_input_errors():
    x, eps, g, gw, coef, k, seeds = C.step_inputs((2, 1, 4, 4), 2, "ddim", "mid")
    with pytest.raises(TypeError, match="0-dim int64"):
        ops.sampler_step(x, eps, coef, 3, seeds, clip=True)
    with pytest.raises(TypeError, match="0-dim int64"):
        ops.sampler_step(x, eps, coef, k.int(), seeds, clip=True)
    with pytest.raises(TypeError, match="coef"):
        ops.sampler_step(x, eps, coef.double(), k, seeds, clip=True)
    with pytest.raises(ValueError, match="require grad"):
        ops.sampler_step(x, eps, coef.clone().requires_grad_(True), k, seeds, clip=True)
    with pytest.raises(ValueError, match="eps"):
        ops.sampler_step(x, eps[:1], coef, k, seeds, clip=True)
    with pytest.raises(ValueError, match="g must be"):
        ops.sampler_step(x, eps, coef, k, seeds, g[:, :1], clip=True)
    with pytest.raises(ValueError, match="gw given without g"):
        ops.sampler_step(x, eps, coef, k, seeds, None, gw, clip=True)
    with pytest.raises(ValueError, match="gw must be"):
        ops.sampler_step(x, eps, coef, k, seeds, g, gw[:1], clip=True)
    with pytest.raises(ValueError, match="seeds"):
        ops.sampler_step(x, eps, coef, k, seeds[:1], clip=True)


@pytest.mark.skipif("cpu" not in STEP_BACKENDS, reason="fastpurify._C not built")
def test_cpp_step_checks_row_range():
    x, eps, _, _, coef, _, seeds = C.step_inputs((2, 1, 4, 4), 0, "ddim", "mid")
    with pytest.raises(RuntimeError, match="outside"):
        ops.sampler_step(x, eps, coef, torch.tensor(coef.shape[0]), seeds, clip=True, backend="cpu")


def test_forced_triton_without_interpreter_explains(monkeypatch):
    x, eps, _, _, coef, k, seeds = C.step_inputs((2, 1, 4, 4), 0, "ddim", "mid")
    if "triton" in STEP_BACKENDS:
        pytest.skip("Triton can run here")
    with pytest.raises(RuntimeError) as e:
        ops.sampler_step(x, eps, coef, k, seeds, clip=True, backend="triton")
    msg = str(e.value)
    assert "forced: triton (backend= argument)" in msg and "TRITON_INTERPRET=1" in msg
    assert all(f"  {n}:" in msg for n in ("torch", "cpu", "triton", "cuda"))


def _opcheck_cases():
    x, eps, g, gw, coef, k, seeds = C.step_inputs((2, 3, 5, 7), 2, "ddpm-fixedsmall", "mid")
    x0, a, s, t, sd = C.diffuse_inputs((2, 3, 5, 7))
    return {"sampler_step": (x, eps, g, gw, coef, k, seeds, True, 1, 0),
            "sampler_step_bwd": (x, x, eps, gw, coef, k, True, True),
            "guidance_accumulate": (g, gw), "guidance_accumulate_bwd": (x, gw),
            "forward_diffuse": (x0, a, s, t, sd, 0, 0, 0), "forward_diffuse_bwd": (x0, a, t),
            "normal": (sd, 35, 1, 1, 0), "philox_bits": (sd, 37, 2, 1, 3)}


@pytest.mark.skipif("cpu" not in STEP_BACKENDS, reason="fastpurify._C not built")
@pytest.mark.parametrize("op", list(_opcheck_cases()))
def test_compiled_ops_pass_opcheck(op):
    """Schemas, fake (shape-only) kernels and AOT dispatch agree with the C++ kernels (fastpurify/ops/fake.py)."""
    result = torch.library.opcheck(getattr(torch.ops.fastpurify, op).default, _opcheck_cases()[op])
    assert set(result.values()) == {"SUCCESS"}, result
