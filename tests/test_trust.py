"""Defects that made our robustness numbers too high or our wrappers unsafe, each pinned by a test that
failed before its fix: gradients at pixels exactly 0/1, train mode leaking through attack libraries, dropout in the
per-step recompute, dtype conversion of the wrappers, and the NFE a report carries."""

import pytest
import torch
from torch import nn

from fastpurify import PurifiedClassifier, Purifier
from fastpurify.models import EpsDiffusion, SmallCNN, SmallUNet
from fastpurify.presets import resolve
from fastpurify.zoo import digits, digits_aux
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Every grad mode that gives the input a gradient, each on a short sampler (VP-SDE for the adjoint).
MODES = {"full": ("ddim", {}), "autograd": ("ddim", {}), "adjoint": ("diffpure", dict(t_star=0.01)),
         "surrogate": ("ddim", dict(surrogate=dict(preset="ddim", steps=2))), "bpda": ("ddim", {})}


def _tiny(dtype=torch.float64, net=None, seed=0):
    torch.manual_seed(seed)
    net = net if net is not None else SmallUNet(1, 8, (1, 2))
    return EpsDiffusion(net, image_size=8, channels=1).to(dtype)


@pytest.mark.parametrize("mode", list(MODES))
def test_pixels_at_0_and_1_get_a_gradient_in_every_mode(mode):
    """The range check clamps values only: a 0- or 1-valued pixel must not get an exactly zero gradient."""
    preset, kw = MODES[mode]
    pur = Purifier(_tiny(), preset, grad=mode, **({"t_star": 20, "steps": 3} if preset == "ddim" else {}), **kw)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    x[:, :, :3] = 0.0
    x[:, :, -2:] = 1.0
    xr = x.clone().requires_grad_(True)
    w = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((pur(xr, seed=5) * w).sum(), xr)
    edge = (x == 0) | (x == 1)
    assert int(edge.sum()) == 2 * 5 * 8
    assert bool((grad[edge] != 0).all()), f"{int((grad[edge] == 0).sum())} boundary pixels have zero gradient"


class BNClassifier(nn.Module):
    """A classifier whose logits depend on train/eval mode (BatchNorm), like our WideResNets."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                                 nn.Linear(4 * 16 * 16, 10))
        self.net[1].running_mean.normal_()

    def forward(self, x):
        return self.net(x)


def test_wrappers_stay_in_eval_mode_through_torchattacks():
    torchattacks = pytest.importorskip("torchattacks")
    m = digits()
    clf = BNClassifier()
    model = PurifiedClassifier(Purifier(m, "ddim"), clf)
    assert not model.training and not clf.training and not model.purifier.model.training
    x, y = m.test_data()
    x, y = x[:3], y[:3]
    stats = clf.net[1].running_mean.clone()
    with torch.no_grad():
        before = model(x, seed=1)
    atk = torchattacks.PGD(model, eps=0.1, alpha=0.05, steps=1)
    atk(x, y)
    assert not any(mod.training for mod in model.modules()), "a module was left in train mode"
    assert torch.equal(clf.net[1].running_mean, stats), "BatchNorm statistics were overwritten"
    with torch.no_grad():
        assert torch.equal(model(x, seed=1), before)
    with pytest.warns(UserWarning, match="stays in eval mode"):
        model.train()
    assert not model.training
    clf.train()  # switched directly: the wrapper switches it back before using it
    with torch.no_grad():
        assert torch.equal(model(x, seed=1), before)


def test_embedded_models_are_not_shared_between_callers():
    a, b = digits(), digits()
    assert a.classifier is not b.classifier and a.diffusion is not b.diffusion
    a.classifier.train()
    assert not b.classifier.training and not digits().classifier.training
    assert digits_aux() is not digits_aux()


class DropoutUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.unet, self.drop = SmallUNet(1, 8, (1, 2)), nn.Dropout(0.5)

    def forward(self, u, t):
        return self.drop(self.unet(u, t))


class NoisyUNet(nn.Module):
    """Draws from torch's global RNG in every call, whatever the mode (a stochastic layer)."""

    def __init__(self):
        super().__init__()
        self.unet = SmallUNet(1, 8, (1, 2))

    def forward(self, u, t):
        return self.unet(u, t) + 0.1 * torch.randn_like(u)


@pytest.mark.parametrize("net", [DropoutUNet, NoisyUNet])
def test_full_equals_autograd_for_networks_that_use_randomness(net):
    """Dropout is off (the purifier runs its network in eval mode); any other RNG use is replayed in the
    per-step recompute, so 'full' still equals plain autograd."""
    model = _tiny(net=net().train())
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w = torch.randn_like(x)
    out = {}
    for mode in ("autograd", "full"):
        pur = Purifier(model, "ddpm", t_star=6, grad=mode)
        assert not model.training
        xr = x.clone().requires_grad_(True)
        torch.manual_seed(11)
        v = pur(xr, seed=3)
        (g,) = torch.autograd.grad((v * w).sum(), xr)
        out[mode] = (v.detach(), g)
    torch.testing.assert_close(out["full"][0], out["autograd"][0], rtol=0, atol=0)
    torch.testing.assert_close(out["full"][1], out["autograd"][1], rtol=1e-10, atol=1e-12)


def test_dtype_conversion_of_the_wrappers():
    model32 = _tiny(torch.float32)
    clf = SmallCNN(1, 10, width=4)
    pc = PurifiedClassifier(Purifier(model32, "ddim", t_star=20, steps=3), clf)
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    pc64 = pc.double()
    assert pc64(x, seed=1).dtype == torch.float64
    assert pc64.purifier.sqrt_abar.dtype == torch.float64  # converted by .double(), still read as float32
    # float64 end to end: gradcheck-style use
    xr = x[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: pc64(t, seed=1), (xr,), eps=1e-6, atol=1e-5, nondet_tol=0.0)
    bf = PurifiedClassifier(Purifier(_tiny(torch.float32), "ddim", t_star=20, steps=3), SmallCNN(1, 10, width=4))
    bf = bf.bfloat16()
    assert bf(x.bfloat16(), seed=1).dtype == torch.bfloat16
    half = PurifiedClassifier(Purifier(_tiny(torch.float32), "ddim", t_star=20, steps=3), SmallCNN(1, 10, width=4))
    with pytest.raises(TypeError, match="float16 diffusion model cannot run on the CPU"):
        half.half()(x.half(), seed=1)


@pytest.mark.parametrize("preset, kw", [("ddpm", dict(t_star=100, steps=30)), ("ddim", dict(t_star=100, steps=7)),
                                        ("diffpure", dict(t_star=0.01)), ("ddpm", dict(t_star=9))])
@pytest.mark.parametrize("respacing", ["uniform", "lee_kim", "trailing"])
def test_reported_nfe_is_the_number_of_network_calls(preset, kw, respacing):
    from dataclasses import replace

    from fastpurify.presets import get_preset

    p = replace(get_preset(preset), respacing=respacing)
    model = _tiny(torch.float32)
    pur = Purifier(model, p, **kw)
    pur(torch.rand(1, 1, 8, 8), seed=0)
    assert pur.last_nfe == pur.config.nfe


def test_lee_kim_respacing_counts_its_extra_steps():
    from dataclasses import replace

    from fastpurify.presets import get_preset

    cfg = resolve(replace(get_preset("ddpm"), respacing="lee_kim"), t_star=100, steps=30)
    assert cfg.nfe == 33  # stride 100 // 30 = 3 → indices 2, 5, …, 98
