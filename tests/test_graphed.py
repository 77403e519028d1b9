"""Static buffers and CUDA graphs (fastpurify.samplers.graphed, `Purifier(graphs=...)`).

CPU lane: the whole static-buffer path with capture disabled (graphs='static') equals eager bit for bit, value and
input gradient, across calls that refill the buffers; forced settings that cannot run raise with the reason.
GPU lane (-m gpu): capture and replay — finite, fresh noise per replay, agreement with eager.
"""

import pytest
import torch

from fastpurify import Purifier
from fastpurify.models import EpsDiffusion, SmallUNet
from fastpurify.samplers.graphed import GraphPlan
from tests.test_grad_modes import ToyGuidance
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

CASES = {"ddpm": ("ddpm", dict(t_star=6)), "ddim": ("ddim", dict(t_star=20, steps=4)),
         "vpsde": ("diffpure", dict(t_star=0.006))}


def _model(device="cpu"):
    torch.manual_seed(0)
    return EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).eval().to(device)


def _data(n=3, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g).to(device), torch.randn(n, 1, 8, 8, generator=g).to(device)


def assert_calls_match_eager(pur, eager, what: str):
    """Several calls through the same purifier (each refills static buffers with new images and seeds): value,
    input gradient and a no-grad call equal the eager purifier's bit for bit."""
    for call, seed in enumerate([7, torch.tensor([3, 1, 4]), 11]):
        x, w = _data(seed=call + 1)
        v_ref, g_ref = _value_and_grad(eager, x, w, seed)
        v, g = _value_and_grad(pur, x, w, seed)
        assert float(g_ref.abs().max()) > 1e-3
        assert torch.equal(v, v_ref) and torch.equal(g, g_ref), f"call {call}: {what} differs from eager"
        with torch.no_grad():
            assert torch.equal(pur(x, seed=seed), eager(x, seed=seed))


def _value_and_grad(pur, x, w, seed):
    xr = x.clone().requires_grad_(True)
    out = pur(xr, seed=seed)
    (g,) = torch.autograd.grad((out * w).sum(), xr)
    return out.detach(), g


# ---------------------------------------------------------------------------------------------- CPU: static path
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("grad", ["full", "autograd"])
def test_static_path_equals_eager_bit_for_bit(case, grad):
    preset, kw = CASES[case]
    m = _model()
    eager = Purifier(m, preset, grad=grad, **kw)
    static = Purifier(m, preset, grad=grad, graphs="static", **kw)
    assert_calls_match_eager(static, eager, "static path")
    assert len(static.graphs.runs) == 2  # one training and one value-only signature, reused across calls


@pytest.mark.usefixtures("one_torch_thread")
def test_static_path_fresh_noise_follows_the_global_rng_like_eager():
    m, (x, _) = _model(), _data()
    eager, static = Purifier(m, "ddpm", t_star=6), Purifier(m, "ddpm", t_star=6, graphs="static")
    with torch.no_grad():
        torch.manual_seed(5)
        a1, a2 = static(x), static(x)
        torch.manual_seed(5)
        b1, b2 = eager(x), eager(x)
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and not torch.equal(a1, a2)


def test_static_outputs_are_copies_not_the_buffers():
    m, (x, _) = _model(), _data()
    pur = Purifier(m, "ddim", t_star=20, steps=2, graphs="static")
    with torch.no_grad():
        a = pur(x, seed=1)
        kept = a.clone()
        pur(x * 0.5, seed=2)
    assert torch.equal(a, kept)


def test_backward_after_a_newer_forward_of_the_same_shape_raises():
    m = _model()
    pur = Purifier(m, "ddim", t_star=20, steps=2, graphs="static")
    x1 = _data(seed=1)[0].requires_grad_(True)
    x2 = _data(seed=2)[0].requires_grad_(True)
    y1, y2 = pur(x1, seed=1), pur(x2, seed=2)
    with pytest.raises(RuntimeError, match="overwrote the static buffers"):
        y1.sum().backward()
    y2.sum().backward()
    assert x2.grad is not None and float(x2.grad.abs().max()) > 0


def test_forced_graphs_that_cannot_run_say_why():
    m = _model()
    with pytest.raises(ValueError, match="CUDA device"):
        Purifier(m, "ddpm", t_star=5, graphs=True)
    with pytest.raises(ValueError, match="guidance"):
        Purifier(m, "ddpm", t_star=5, graphs="static", guidance=ToyGuidance())
    with pytest.raises(ValueError, match="adjoint"):
        Purifier(m, "diffpure", t_star=0.005, grad="adjoint", graphs="static")
    with pytest.raises(ValueError, match="graphs must be"):
        Purifier(m, "ddpm", t_star=5, graphs="yes")
    static = Purifier(m, "diffpure", t_star=0.005, graphs="static")  # a per-call adjoint cannot run static either
    with pytest.raises(RuntimeError, match="adjoint"):
        static(_data()[0].requires_grad_(True), seed=0, grad="adjoint")


def test_auto_falls_back_and_records_why():
    m = _model()
    pur = Purifier(m, "ddpm", t_star=5, graphs="auto")
    g = pur.grad_config()["speed"]["graphs"]
    assert g["active"] is False and "CUDA device" in g["reason"] and g["setting"] == "auto"
    assert Purifier(m, "ddpm", t_star=5).grad_config()["speed"]["graphs"]["reason"] == "graphs=False"


def test_auto_plan_falls_back_per_call_for_the_adjoint():
    """A plan that would capture (CUDA, no guidance) meets a per-call grad='adjoint': eager, reason recorded."""
    plan = GraphPlan("auto", device=torch.device("cuda"), guidance=False, grad="full")
    assert plan.enabled and plan.capture
    calls = []
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    out = plan.run(lambda *a: calls.append(a) or a[0] * 2, x, torch.zeros(2, dtype=torch.int64), 0, "adjoint")
    assert calls and calls[0][3] == "adjoint" and torch.equal(out, x * 2) and "adjoint" in plan.reason
    assert not plan.runs


# ---------------------------------------------------------------------------------------------- GPU: capture
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("grad", ["full", "autograd"])
@pytest.mark.gpu
@needs_gpu
def test_captured_purification_agrees_with_eager(case, precision, grad):
    preset, kw = CASES[case]
    m = _model("cuda")
    eager = Purifier(m, preset, grad=grad, precision=precision, **kw)
    graphed = Purifier(m, preset, grad=grad, precision=precision, graphs=True, **kw)
    assert graphed.grad_config()["speed"]["graphs"]["capture"]
    for call in range(3):  # the first call captures, the next ones replay with new images and seeds
        x, w = _data(seed=call + 1, device="cuda")
        v_ref, g_ref = _value_and_grad(eager, x, w, seed=call)
        v, g = _value_and_grad(graphed, x, w, seed=call)
        assert torch.isfinite(v).all() and torch.isfinite(g).all()
        torch.testing.assert_close(v, v_ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(g, g_ref, atol=1e-4 * float(g_ref.abs().max()), rtol=1e-4)


@pytest.mark.gpu
@needs_gpu
def test_every_replay_draws_fresh_noise_without_host_syncs():
    m, (x, _) = _model("cuda"), _data(device="cuda")
    pur = Purifier(m, "diffpure", t_star=0.006, graphs=True)
    with torch.no_grad():
        first = pur(x)  # capture
        torch.cuda.synchronize()
        run = next(iter(pur.graphs.runs.values()))
        outs = []
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                run.forward(x, torch.randint(0, 2**62, (x.shape[0],), device="cuda"))  # device seeds: no host copy
                outs.append(run.out.clone())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        again = pur(x)
    assert all(torch.isfinite(o).all() for o in outs + [first, again])
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2]) and not torch.equal(first, again)


@pytest.mark.gpu
@needs_gpu
def test_captured_compiled_denoiser_agrees_with_eager():
    m, (x, w) = _model("cuda"), _data(device="cuda")
    v_ref, g_ref = _value_and_grad(Purifier(m, "ddpm", t_star=6), x, w, seed=3)
    v, g = _value_and_grad(Purifier(m, "ddpm", t_star=6, compile=True, graphs=True), x, w, seed=3)
    torch.testing.assert_close(v, v_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(g, g_ref, atol=1e-3 * float(g_ref.abs().max()), rtol=1e-3)
