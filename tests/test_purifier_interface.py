"""One purifier interface: every wrapper of the package implements `PurifierLike` — the same keyword forward
(seed, round, grad, trace) and `first_round()` to reach the sampler — so nothing has to unwrap by attribute."""

import pytest
import torch

from fastpurify import Purifier
from fastpurify.api import PurifierLike
from fastpurify.methods import MethodPurifier, MultiRound, ResizePurifier, build_method
from fastpurify.models import EpsDiffusion, SmallUNet


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).eval()


def _wrappers(model):
    p = Purifier(model, "ddpm", t_star=6)
    mr = MultiRound([Purifier(model, "ddpm", t_star=4), Purifier(model, "ddpm", t_star=5)])
    return {"purifier": (p, p), "multiround": (mr, mr.rounds[0]),
            "method": (MethodPurifier("m", mr, {"nfe": 9}), mr.rounds[0]),
            "resize": (ResizePurifier(p, size=model.image_size), p),
            "resize(method)": (ResizePurifier(build_method("diffpure", model, settings={"preset": "ddpm", "t_star": 6}),
                                              size=model.image_size), None)}


def test_every_wrapper_is_purifier_like_and_reaches_its_first_round(model):
    for name, (w, first) in _wrappers(model).items():
        assert isinstance(w, PurifierLike), name
        got = w.first_round()
        assert isinstance(got, Purifier), name
        if first is not None:
            assert got is first, name


def test_the_same_keyword_call_works_on_every_wrapper(model):
    x = torch.rand(2, model.channels, model.image_size, model.image_size, requires_grad=True)
    for name, (w, _) in _wrappers(model).items():
        trace = []
        y = w(x, seed=torch.tensor([3, 4]), round=0, grad="full", trace=trace)
        assert y.shape == x.shape and trace, name
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_a_multiround_takes_no_outer_round_word(model):
    mr = MultiRound([Purifier(model, "ddpm", t_star=4)])
    with pytest.raises(ValueError, match="numbers its own rounds"):
        mr(torch.rand(1, model.channels, model.image_size, model.image_size), seed=0, round=1)
