"""purify / Purifier end to end on loaded random-weight models: DiffPure presets, time conventions, the ImageNet
224 → 256 → 224 path with gradients, and (slow) the full-size public architectures."""

import math
from dataclasses import replace

import pytest
import torch

import fastpurify
from fastpurify import PurifiedClassifier, Purifier, purify
from fastpurify.methods import ResizePurifier
from fastpurify.models import PretrainedDiffusion, load_classifier, load_diffusion
from fastpurify.models.adm import ADM_256_UNCOND, ADMUNet
from fastpurify.models.ddpm_model import DDPM_CELEBAHQ, DDPM_CIFAR10, DDPMModel
from fastpurify.models.loaders import _adm_config, _ddpm_config, _ncsnpp_config
from fastpurify.models.ncsnpp import NCSNPP_CIFAR10, NCSNpp
from fastpurify.presets import get_preset, resolve
from fastpurify.schedules import get_vpsde_schedule
from tests.model_helpers import TINY_ADM, randomize_, save_score_sde, save_state_dict, tiny


def _meta_sd(build):
    with torch.device("meta"):
        return build().state_dict()


def test_public_configs_are_inferred_without_overrides():
    """The real files need no keyword arguments: every hyper-parameter follows from their keys and shapes."""
    assert _ncsnpp_config(_meta_sd(lambda: NCSNpp(**NCSNPP_CIFAR10)), 32) == NCSNPP_CIFAR10
    assert _adm_config(_meta_sd(lambda: ADMUNet(**ADM_256_UNCOND)), None, 64) == ADM_256_UNCOND
    assert _ddpm_config(_meta_sd(lambda: DDPMModel(**DDPM_CIFAR10)), None) == DDPM_CIFAR10
    assert _ddpm_config(_meta_sd(lambda: DDPMModel(**DDPM_CELEBAHQ)), None) == DDPM_CELEBAHQ


@pytest.mark.parametrize("name, t_star, nfe", [("diffpure-cifar10", 0.1, 100), ("diffpure-cifar10-l2", 0.075, 75),
                                               ("diffpure-imagenet", 0.15, 150)])
def test_diffpure_presets_have_the_published_settings(name, t_star, nfe):
    p = get_preset(name)
    assert (p.sampler, p.t_star, p.dt, p.s_end, p.clamp_output) == ("vpsde", t_star, 1e-3, 1e-5, False)
    assert resolve(name).nfe == nfe  # docs/METHODS.md §4: 100 / 75 / 150 network evaluations


class _Spy:
    """Records the τ each UNet call receives."""

    def __init__(self, model):
        self.taus, net = [], model.net
        fwd = net.forward

        def forward(x, tau):
            self.taus.append(tau.tolist())
            return fwd(x, tau)

        net.forward = forward


@pytest.fixture(scope="module")
def ncsnpp_file(tmp_path_factory):
    return save_score_sde(tiny("ncsnpp"), tmp_path_factory.mktemp("m") / "checkpoint_8.pth")


def test_diffpure_cifar10_with_a_loaded_ncsnpp(ncsnpp_file):
    model = fastpurify.load_diffusion(ncsnpp_file, image_size=8)
    spy = _Spy(model)
    x = (torch.rand(2, 3, 8, 8) > 0.5).float()  # saturated pixels: purified values land outside [0, 1]
    y = purify(x, model=model, preset="diffpure-cifar10", steps=2, seed=5)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # score_sde time input τ = 999·s on the grid s* = 0.1 → 0.050005 (two steps down to 1e-5).
    assert spy.taus == [[pytest.approx(99.9)] * 2, [pytest.approx(999 * 0.050005, rel=1e-6)] * 2]
    assert torch.equal(y, purify(x, model=model, preset="diffpure-cifar10", steps=2, seed=5))
    # DiffPure hands (u + 1)/2 to the classifier unclamped (docs/METHODS.md §1.1).
    assert ((y < 0) | (y > 1)).any()
    clamped = replace(get_preset("diffpure-cifar10"), clamp_output=True)
    assert torch.equal(purify(x, model=model, preset=clamped, steps=2, seed=5), y.clamp(0, 1))


def test_adm_time_rule_is_diffpures_floor():
    m = PretrainedDiffusion(tiny("adm"), image_size=16, channels=3, time_input="index", index_at_time="floor")
    assert [m.tau_at_time(s) for s in (0.15, 0.147, 0.075005, 1e-5)] == [150.0, 147.0, 75.0, 0.0]
    m.index_at_time = "shifted"
    assert m.tau_at_time(0.15) == pytest.approx(149.0)
    # score = −ε/σ(s) (score_sde get_score_fn, continuous VP)
    u = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(m.score_at_time(u, 0.1), -m.eps_at_time(u, 0.1) / get_vpsde_schedule().sigma(0.1))


@pytest.fixture(scope="module")
def imagenet_files(tmp_path_factory):
    """A tiny ADM at the real 256×256 geometry (learned σ, attention at 32) and a random torchvision ResNet-50."""
    import torchvision

    d = tmp_path_factory.mktemp("in")
    cfg = dict(TINY_ADM, image_size=256, channel_mult=(1, 1, 2, 2), attention_resolutions=(32,), num_head_channels=32)
    adm = save_state_dict(randomize_(ADMUNet(**cfg)), d / "256x256_diffusion_uncond.pt")
    clf = save_state_dict(torchvision.models.resnet50(), d / "resnet50.pth")
    return adm, clf


def test_diffpure_imagenet_224_to_256_with_gradients(imagenet_files):
    adm, clf = imagenet_files
    model = load_diffusion(adm, image_size=256, num_head_channels=32)
    assert model.image_size == 256 and model.index_at_time == "floor"
    spy = _Spy(model)
    purifier = ResizePurifier(Purifier(model, "diffpure-imagenet", steps=1))
    pc = PurifiedClassifier(purifier, load_classifier(clf), seed=3)
    x = torch.rand(1, 3, 224, 224, requires_grad=True)
    logits = pc(x)
    assert logits.shape == (1, 1000) and spy.taus == [[150.0]]
    logits[0, 1].backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # The resize is bilinear both ways; at 256 input it is the identity.
    with torch.no_grad():
        y256 = purifier(torch.rand(1, 3, 256, 256), seed=1)
    assert y256.shape == (1, 3, 256, 256)


def test_resize_purifier_passes_grad_modes_and_reports_nfe():
    """The attacks call purifier(x, seed=, grad=, trace=): the resize wrapper must pass them on (BPDA through the
    resize is the resize's own Jacobian) and report the wrapped purifier's NFE."""
    from fastpurify.zoo import digits

    inner = Purifier(digits().diffusion, "ddpm", t_star=20, steps=2)
    wrapped = ResizePurifier(inner, size=16)
    assert wrapped.nfe == inner.config.nfe == 2 and wrapped.describe()["resize_to"] == 16
    x = torch.rand(2, 1, 12, 12, requires_grad=True)
    w = torch.randn(2, 1, 12, 12)
    (wrapped(x, seed=0, grad="bpda") * w).sum().backward()
    up = torch.nn.functional.interpolate
    x2 = x.detach().clone().requires_grad_(True)
    (up(up(x2, size=(16, 16), mode="bilinear"), size=(12, 12), mode="bilinear") * w).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    assert wrapped.last_nfe == inner.last_nfe == 2


# ---------------------------------------------------------------------------------------------- full size (slow)
@pytest.mark.slow
def test_full_size_ncsnpp_checkpoint_loads_and_purifies(tmp_path):
    net = randomize_(NCSNpp(**NCSNPP_CIFAR10))
    path = save_score_sde(net, tmp_path / "checkpoint_8.pth")
    model = load_diffusion(path)  # no overrides: the real file's config is inferred
    assert model.net.config == NCSNPP_CIFAR10 and model.meta["tensors"] == 956
    assert model.meta["params"] == 106_632_579
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(2 * x - 1, torch.tensor([99.9])), net(2 * x - 1, torch.tensor([99.9])),
                                   atol=0, rtol=0)
    y = purify(x, model=model, preset="diffpure-cifar10", steps=1, seed=0)
    assert torch.isfinite(y).all()


@pytest.mark.slow
def test_full_size_adm_256_loads_and_purifies_at_224(tmp_path):
    net = ADMUNet(**ADM_256_UNCOND).eval().requires_grad_(False)
    for p in net.parameters():  # cheaper than randomize_ at 552.8 M parameters; zero-init layers get weights too
        p.normal_(0, 0.02) if p.dim() > 1 else p.zero_()
    path = save_state_dict(net, tmp_path / "256x256_diffusion_uncond.pt")
    del net
    model = load_diffusion(path)  # fp32: CPU fp16 convs are slow; the fp16 split is tested on the tiny ADM
    assert model.net.config == ADM_256_UNCOND and model.meta["tensors"] == 566
    assert model.meta["params"] == 552_814_086 and math.isclose(model.meta["params"] / 1e6, 552.8, abs_tol=0.05)
    with torch.no_grad():
        y = ResizePurifier(Purifier(model, "diffpure-imagenet", steps=1))(torch.rand(1, 3, 224, 224), seed=0)
    assert y.shape == (1, 3, 224, 224) and torch.isfinite(y).all()
