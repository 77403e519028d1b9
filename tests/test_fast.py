"""The fast denoiser (fastpurify.models.fast): compile, low precision, channels_last — each against eager fp32.

Tolerances are the stated ones (`fast.TOLERANCE`): max |Δ| of the purified image and the relative L2 error of the
attack's input gradient.  The quick lane traces with dynamo + AOTAutograd ("aot_eager": the same graph capture,
static shapes and joint forward/backward graphs as inductor, without code generation); the slow lane compiles with
inductor itself.
"""

import pytest
import torch

from fastpurify import Purifier
from fastpurify.models import EpsDiffusion, SmallUNet, fast
from fastpurify.models.fast import TOLERANCE, FastDenoiser, SpeedOptions, fast_denoiser, precision_support
from fastpurify.models.pretrained import PretrainedDiffusion
from tests.model_helpers import tiny
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (preset, settings): VP-SDE (DiffPure; the adjoint applies), DDPM with the clamped x̂₀.
CASES = {"vpsde": ("diffpure", dict(t_star=0.006)), "ddpm": ("ddpm", dict(t_star=6))}


def _unet(seed=0):
    torch.manual_seed(seed)
    return EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).eval()


def _ncsnpp():
    return PretrainedDiffusion(tiny("ncsnpp"), image_size=8, channels=3, time_input="continuous")


def _data(model, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (n, model.channels, model.image_size, model.image_size)
    return torch.rand(shape, generator=g), torch.randn(shape, generator=g)


def _value_and_grad(pur, x, w, seed=7):
    xr = x.clone().requires_grad_(True)
    out = pur(xr, seed=seed)
    (g,) = torch.autograd.grad((out * w).sum(), xr)
    return out.detach(), g


def _errors(v, g, v_ref, g_ref):
    assert float(g_ref.norm()) > 1e-3, "reference gradient is ~0: the comparison could not fail"
    return float((v - v_ref).abs().max()), float((g - g_ref).norm() / g_ref.norm())


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setattr(fast, "COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("kwargs, err, match", [
    (dict(precision="fp8"), ValueError, "precision"),
    (dict(compile=1), TypeError, "compile"),
    (dict(channels_last="yes"), TypeError, "channels_last"),
])
def test_bad_options_get_clear_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        Purifier(_unet(), "ddpm", t_star=5, **kwargs)


def test_fp16_on_a_cpu_without_it_says_why():
    if {"avx512_fp16", "amx_fp16"} & fast.cpu_flags():
        pytest.skip("this CPU has native fp16")
    with pytest.raises(ValueError, match="avx512_fp16"):
        Purifier(_unet(), "ddpm", t_star=5, precision="fp16")


def test_bf16_support_is_reported_honestly():
    note = precision_support("bf16", torch.device("cpu"))
    native = bool({"avx512_bf16", "amx_bf16"} & fast.cpu_flags())
    assert (note == "native") == native and (native or "emulated" in note)


def test_default_options_drive_the_model_itself():
    m = _unet()
    pur = Purifier(m, "ddpm", t_star=5)
    assert pur.denoiser is m and pur.grad_config()["precision"] == "fp32"
    assert isinstance(fast_denoiser(m, SpeedOptions(channels_last=True)), FastDenoiser)


def test_denoisers_are_cached_per_model_and_options_and_not_part_of_the_state():
    m = _unet()
    a = Purifier(m, "ddpm", t_star=5, precision="bf16")
    assert Purifier(m, "ddim", t_star=5, steps=2, precision="bf16").denoiser is a.denoiser
    assert Purifier(m, "ddpm", t_star=5, channels_last=True).denoiser is not a.denoiser
    assert set(a.state_dict()) == {f"model.{k}" for k in m.state_dict()}
    import copy

    assert copy.deepcopy(m).__dict__[fast._CACHE_ATTR] == {}


def test_load_diffusion_records_speed_defaults_for_every_purifier(tmp_path):
    from fastpurify.models import load_diffusion, save_pretrained

    path = save_pretrained(_ncsnpp(), tmp_path / "n.safetensors")
    m = load_diffusion(path, precision="bf16", channels_last=True)
    assert m.speed == SpeedOptions(precision="bf16", channels_last=True)
    pur = Purifier(m, "diffpure-cifar10")
    assert pur.speed == m.speed and pur.grad_config()["precision"] == "bf16"
    assert Purifier(m, "diffpure-cifar10", precision="fp32").speed.precision == "fp32"  # explicit wins
    with pytest.raises(ValueError, match="precision"):
        load_diffusion(path, precision="int8")


# ---------------------------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("make", [_unet, _ncsnpp], ids=["small-unet", "ncsnpp"])
def test_bf16_autocast_within_tolerance_on_value_and_gradient(make, case):
    preset, kw = CASES[case]
    m = make()
    x, w = _data(m)
    v_ref, g_ref = _value_and_grad(Purifier(m, preset, **kw), x, w)
    v, g = _value_and_grad(Purifier(m, preset, precision="bf16", **kw), x, w)
    dv, dg = _errors(v, g, v_ref, g_ref)
    tol_v, tol_g = TOLERANCE["bf16"]
    assert dv <= tol_v and dg <= tol_g, f"bf16: value max |Δ| {dv:.3e} (tol {tol_v}), grad rel {dg:.3e} (tol {tol_g})"
    assert dv > 0, "bf16 autocast changed nothing: the network did not run in bf16"
    assert v.dtype == torch.float32 and g.dtype == torch.float32


def test_autocast_covers_only_the_network():
    """ε̂ leaves the network in fp32, so the fused step, schedule and noise stay fp32."""
    m = _unet()
    seen = []
    m.net.stem.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    eps = fast_denoiser(m, SpeedOptions(precision="bf16")).eps_at_index(torch.rand(2, 1, 8, 8), 3)
    assert seen == [torch.bfloat16] and eps.dtype == torch.float32


def test_channels_last_feeds_nhwc_and_matches_fp32():
    m = _ncsnpp()
    layouts = []
    m.net.all_modules[2].register_forward_pre_hook(
        lambda mod, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    x, w = _data(m)
    v_ref, g_ref = _value_and_grad(Purifier(m, "diffpure", t_star=0.004), x, w)
    layouts.clear()
    v, g = _value_and_grad(Purifier(m, "diffpure", t_star=0.004, channels_last=True), x, w)
    assert layouts and all(layouts)
    dv, dg = _errors(v, g, v_ref, g_ref)
    assert dv <= 1e-5 and dg <= 1e-5, (dv, dg)


# ---------------------------------------------------------------------------------------------- compile
def _check_compiled(m, preset, kw, modes, tol):
    x, w = _data(m)
    for mode in modes:
        v_ref, g_ref = _value_and_grad(Purifier(m, preset, grad=mode, **kw), x, w)
        pur = Purifier(m, preset, grad=mode, compile=True, **kw)
        v, g = _value_and_grad(pur, x, w)
        dv, dg = _errors(v, g, v_ref, g_ref)
        assert dv <= tol[0] and dg <= tol[1], f"{mode}: value max |Δ| {dv:.3e}, grad rel {dg:.3e} (tol {tol})"
    return pur


@pytest.mark.usefixtures("aot_eager")
@pytest.mark.parametrize("case", list(CASES))
def test_compiled_graph_full_and_adjoint_gradients_match_eager(case):
    preset, kw = CASES[case]
    modes = ("full", "adjoint", "autograd") if case == "vpsde" else ("full",)
    m = _unet()
    pur = _check_compiled(m, preset, kw, modes, (1e-6, 1e-6))  # aot_eager runs the same aten ops: ~exact
    assert {k.split()[-1] for k in pur.grad_config()["speed"]["compile_seconds"]} == {"grad", "no_grad"}


@pytest.mark.usefixtures("aot_eager")
def test_second_call_and_second_purifier_do_not_recompile():
    m, x = _unet(), torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        Purifier(m, "ddpm", t_star=3, compile=True)(x, seed=0)
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        pur = Purifier(m, "ddim", t_star=4, steps=2, compile=True)
        pur(x, seed=1)
        pur(x, seed=2)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    assert list(pur.denoiser.compile_seconds) == ["2x1x8x8 float32 cpu no_grad"]


@pytest.mark.usefixtures("aot_eager")
def test_compiled_with_bf16_and_channels_last():
    m = _unet()
    x, w = _data(m, n=2)
    v_ref, g_ref = _value_and_grad(Purifier(m, "diffpure", t_star=0.004), x, w)
    v, g = _value_and_grad(Purifier(m, "diffpure", t_star=0.004, compile=True, precision="bf16",
                                    channels_last=True), x, w)
    dv, dg = _errors(v, g, v_ref, g_ref)
    assert 0 < dv <= TOLERANCE["bf16"][0] and dg <= TOLERANCE["bf16"][1], (dv, dg)


@pytest.mark.slow
@pytest.mark.parametrize("make", [_unet, _ncsnpp], ids=["small-unet", "ncsnpp"])
def test_inductor_compiled_full_and_adjoint_within_tolerance(make):
    """Real code generation (C++ on the CPU): ≈ 1–2 min on 2 cores with a cold inductor cache."""
    torch._dynamo.reset()
    m = make()
    pur = _check_compiled(m, "diffpure", CASES["vpsde"][1], ("full", "adjoint"), TOLERANCE["compile"])
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    _value_and_grad(pur, *_data(m))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
