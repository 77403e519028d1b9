import pytest
import torch

from fastpurify import ops
from fastpurify.ops.reference.forward_diffusion import forward_diffuse_ref
from fastpurify.ops.reference.philox import derive_seeds
from tests import op_checks as C
from tests.utils import (assert_close_verbose, available_backends_for, backend_dtype_pairs,  # noqa: F401
                         one_torch_thread)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _inputs(shape, dtype, T=1000):
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)
    a, s = abar.sqrt().float(), (1 - abar).sqrt().float()
    x0 = torch.rand(shape, dtype=dtype) * 2 - 1
    t = torch.randint(0, T, (shape[0],))
    seeds = derive_seeds(3, torch.arange(shape[0]))
    return x0, a, s, t, seeds


@pytest.mark.parametrize("backend", available_backends_for("forward_diffuse"))
@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (3, 3, 17, 23), (1, 1, 1, 1)])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-6), (torch.float64, 2e-6)])
def test_forward_diffuse_matches_reference(backend, shape, dtype, atol):
    x0, a, s, t, seeds = _inputs(shape, dtype)
    got = ops.forward_diffuse(x0, a, s, t, seeds, step=2, purpose=0, round=1, backend=backend)
    ref = forward_diffuse_ref(x0, a, s, t, seeds, step=2, purpose=0, round=1)
    assert got.dtype == dtype and got.shape == shape
    assert_close_verbose(got, ref, atol=atol, rtol=1e-6, what=f"forward_diffuse[{backend}]")


@pytest.mark.parametrize("backend", available_backends_for("forward_diffuse"))
@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (3, 3, 17, 23)])
def test_forward_diffuse_forward_and_backward_match_reference(backend, shape):
    C.check_diffuse_forward_backward(backend, shape)


@pytest.mark.parametrize("backend, dtype", backend_dtype_pairs("forward_diffuse", C.LOW))
def test_forward_diffuse_low_precision(backend, dtype):
    C.check_diffuse_low_precision(backend, dtype, (3, 3, 17, 23))


@pytest.mark.parametrize("backend", available_backends_for("forward_diffuse", dtype=torch.float64))
def test_forward_diffuse_gradcheck_fp64(backend):
    x0, a, s, t, seeds = _inputs((2, 1, 3, 5), torch.float64)
    x0.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: ops.forward_diffuse(x, a, s, t, seeds, backend=backend), (x0,))


def test_forward_diffuse_is_batch_invariant():
    x0, a, s, t, seeds = _inputs((6, 1, 4, 4), torch.float32)
    full = ops.forward_diffuse(x0, a, s, t, seeds)
    perm = torch.tensor([4, 1, 5])
    part = ops.forward_diffuse(x0[perm], a, s, t[perm], seeds[perm])
    assert torch.equal(full[perm], part)


def test_forced_backend_that_cannot_run_lists_every_reason():
    x0, a, s, t, seeds = _inputs((2, 1, 4, 4), torch.float16)
    with pytest.raises(RuntimeError) as e:
        ops.forward_diffuse(x0, a, s, t, seeds, backend="cuda")
    msg = str(e.value)
    assert "forced: cuda" in msg and all(f"  {n}:" in msg for n in ("torch", "cpu", "triton", "cuda"))


def test_env_var_forces_backend(monkeypatch):
    x0, a, s, t, seeds = _inputs((2, 1, 4, 4), torch.float32)
    monkeypatch.setenv("FASTPURIFY_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="FASTPURIFY_BACKEND"):
        ops.forward_diffuse(x0, a, s, t, seeds)
    monkeypatch.setenv("FASTPURIFY_BACKEND", "bogus")
    with pytest.raises(ValueError, match="unknown backend"):
        ops.forward_diffuse(x0, a, s, t, seeds)


def test_bad_tables_are_rejected():
    x0, a, s, t, seeds = _inputs((2, 1, 4, 4), torch.float32)
    with pytest.raises(ValueError):
        ops.forward_diffuse(x0, a, s, t[:1], seeds)
    with pytest.raises(TypeError):
        ops.forward_diffuse(x0, a, s, t.int(), seeds)
    with pytest.raises(TypeError):
        ops.forward_diffuse(x0, a.double(), s, t, seeds)


@pytest.mark.skipif("cpu" not in available_backends_for("forward_diffuse"), reason="fastpurify._C not built")
def test_cpp_op_checks_index_range():
    x0, a, s, t, seeds = _inputs((2, 1, 4, 4), torch.float32)
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.fastpurify.forward_diffuse(x0, a, s, torch.tensor([0, 1000]), seeds, 0, 0, 0)
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.fastpurify.forward_diffuse_bwd(x0, a, torch.tensor([-1, 0]))
