
import dataclasses

import pytest
import torch

import fastpurify
from fastpurify import PurifiedClassifier, Purifier, purify
from fastpurify.models import EpsDiffusion, SmallCNN, SmallUNet
from fastpurify.presets import preset_names, resolve
from fastpurify.ops.reference.philox import derive_seeds


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).eval()


def _x(n=4, size=8):
    return torch.rand(n, 1, size, size)


@pytest.mark.parametrize("preset", ["diffpure", "ddpm", "ddpm-fixedlarge", "ddim"])
def test_purify_runs_every_preset(tiny_model, preset):
    y = purify(_x(), model=tiny_model, preset=preset, t_star=0.02, steps=None if preset != "ddim" else 4, seed=0)
    assert y.shape == (4, 1, 8, 8) and y.dtype == torch.float32
    assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_same_seed_same_sample_whatever_the_batch(tiny_model):
    """Per-sample Philox streams: a sample's result depends on its seed only, not on batch size or order."""
    x = _x(6)
    seeds = derive_seeds(42, torch.arange(6))
    pur = Purifier(tiny_model, "ddpm", t_star=20)
    full = pur(x, seed=seeds)
    perm = torch.tensor([5, 2, 0])
    part = pur(x[perm], seed=seeds[perm])
    single = pur(x[3:4], seed=seeds[3:4])
    # Equal up to float reassociation inside the UNet's batched convolutions.
    assert torch.allclose(full[perm], part, atol=1e-5) and torch.allclose(full[3:4], single, atol=1e-5)
    # An int seed means derive_seeds(seed, arange(B)): the same as passing those seeds explicitly.
    assert torch.allclose(pur(x, seed=42), full, atol=0)
    # Different seeds, different samples; no seed, fresh noise on every call (what EOT expects).
    assert (pur(x, seed=43) - full).abs().max() > 1e-3
    assert (pur(x) - pur(x)).abs().max() > 1e-3


def test_t_star_int_and_float_agree(tiny_model):
    x = _x()
    assert torch.equal(purify(x, model=tiny_model, preset="ddpm", t_star=30, seed=1),
                       purify(x, model=tiny_model, preset="ddpm", t_star=0.03, seed=1))
    r = resolve("diffpure", t_star=0.1)
    assert (r.k, r.s_star, r.nfe) == (100, 0.1, 100)
    assert resolve("ddpm", t_star=70).nfe == 70 and resolve("ddim", t_star=100, steps=5).nfe == 5


def test_purified_classifier_is_a_module_returning_logits(tiny_model):
    clf = SmallCNN(1, 10, 8)
    pc = PurifiedClassifier(Purifier(tiny_model, "ddpm", t_star=10), clf)
    x = _x().requires_grad_(True)
    logits = pc(x)
    assert logits.shape == (4, 10)
    logits.sum().backward()  # plain autograd flows through every sampler step to the input
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in tiny_model.parameters())  # frozen diffusion weights


@pytest.mark.parametrize("bad, err, match", [
    (torch.full((2, 1, 8, 8), float("nan")), ValueError, "NaN"),
    (torch.full((2, 1, 8, 8), float("inf")), ValueError, "NaN/Inf"),
    (torch.full((2, 1, 8, 8), 1.5), ValueError, r"\[0, 1\]"),
    (torch.full((2, 1, 8, 8), -0.01), ValueError, r"\[0, 1\]"),
    (torch.rand(1, 8, 8), ValueError, "4 dims"),
    (torch.rand(2, 3, 8, 8), ValueError, "channels"),
    (torch.rand(2, 1, 9, 9), ValueError, "expects 8"),
    (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), TypeError, "float"),
    (torch.rand(0, 1, 8, 8), ValueError, "empty"),
    ([[0.5]], TypeError, "torch.Tensor"),
])
def test_bad_images_get_clear_errors(tiny_model, bad, err, match):
    with pytest.raises(err, match=match):
        purify(bad, model=tiny_model, preset="ddpm", t_star=5)


def test_range_tolerance_accepts_float_noise(tiny_model):
    x = _x()
    x[0, 0, 0, 0] = -2.98e-08  # torchattacks#136
    assert purify(x, model=tiny_model, preset="ddpm", t_star=5, seed=0).shape == x.shape


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(t_star=0.0), ValueError, r"\(0, 1\]"),
    (dict(t_star=1.5), ValueError, r"\(0, 1\]"),
    (dict(t_star=0), ValueError, "outside"),
    (dict(t_star=1001), ValueError, "outside"),
    (dict(t_star="0.1"), TypeError, "t_star"),
    (dict(steps=0), ValueError, "steps"),
    (dict(steps=2.5), TypeError, "steps"),
    (dict(preset="nope"), ValueError, "unknown preset"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=torch.tensor([1, 2])), ValueError, "seed"),
    (dict(backend="gpu"), ValueError, "unknown backend"),
])
def test_bad_settings_get_clear_errors(tiny_model, kwargs, err, match):
    with pytest.raises(err, match=match):
        purify(_x(), model=tiny_model, **{"preset": "ddpm", "t_star": 5, **kwargs})


def test_steps_above_t_star_rejected(tiny_model):
    with pytest.raises(ValueError, match="exceeds"):
        purify(_x(), model=tiny_model, preset="ddim", t_star=5, steps=6)


def test_no_model_for_foreign_shape_says_how_to_load_one():
    with pytest.raises(ValueError, match="model="):
        purify(torch.rand(2, 3, 32, 32))


def test_not_a_diffusion_model_is_a_type_error():
    with pytest.raises(TypeError, match="EpsDiffusion"):
        purify(_x(), model=torch.nn.Linear(2, 2))


def test_public_names():
    assert {"diffpure", "ddpm", "ddim"} <= set(preset_names())
    assert callable(fastpurify.purify) and fastpurify.__version__
    b = fastpurify.available_backends()
    assert set(b) == {"torch", "cpu", "triton", "cuda"} and b["torch"]["available"]
    assert all(b[k]["available"] or b[k]["reason"] for k in b)


def test_settings_object_and_keywords_build_the_same_purifier(tiny_model):
    """Purifier(model, preset, t_star=..., ...) and Purifier(model, settings=PurifierSettings(...)) are one purifier;
    keywords given with settings= replace those fields; an unknown keyword is a TypeError naming it."""
    from fastpurify.api import PurifierSettings

    a = Purifier(tiny_model, "ddim", t_star=6, steps=3, fixed_noise_seed=4)
    s = PurifierSettings(preset="ddim", t_star=6, steps=3, fixed_noise_seed=4)
    b = Purifier(tiny_model, settings=s)
    assert a.settings == b.settings == s and a.config == b.config and b.fixed_noise_seed == 4
    x = _x()
    assert torch.equal(a(x), b(x))
    c = Purifier(tiny_model, "ddpm", settings=s, t_star=5, steps=None)
    assert (c.config.preset.name, c.config.k, c.fixed_noise_seed) == ("ddpm", 5, 4)
    with pytest.raises(TypeError, match="'t_sar'"):
        Purifier(tiny_model, "ddim", t_sar=5)
    with pytest.raises(ValueError, match="grad_memory"):
        PurifierSettings(grad_memory=-1)
    with pytest.raises(ValueError, match="adjoint"):
        PurifierSettings(preset="ddim", grad="adjoint")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.t_star = 7
