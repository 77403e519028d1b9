"""Guided purification: s = 0 identities, guidance gradients vs finite differences, exact gradients
through guidance, multi-round and ensembles, the TRADES-trained auxiliary network."""

import copy
import dataclasses
import json
import math

import pytest
import torch

from fastpurify import Purifier
from fastpurify.evaluation.gradcheck import finite_difference_check
from fastpurify.methods.multiround import EnsembleClassifier, MultiRound
from fastpurify.methods.guidance import AGDMConfig, AGDMGuidance, GDMPConfig, GDMPGuidance, feature_distance, mse, ssim
from fastpurify.methods.guidance.terms import class_log_prob
from fastpurify.models import EpsDiffusion, SmallCNN, SmallUNet
from fastpurify.ops.reference.philox import GUIDANCE_TARGET, derive_seeds, normal_ref
from tests.utils import one_torch_thread  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).eval()
    aux = SmallCNN(1, 10, 4).eval()
    return model, aux


def _x(n=3):
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["agdm", "gdmp-mse", "gdmp-ssim"])
def test_zero_scale_is_exactly_the_unguided_sampler(tiny, kind):
    model, aux = tiny
    if kind == "agdm":
        g = AGDMGuidance(aux, AGDMConfig(scale=0.0))
    else:
        g = GDMPGuidance(GDMPConfig(distance=kind.split("-")[1], guide_scale=0.0))
    x = _x()
    plain = Purifier(model, "ddpm", t_star=12)(x, seed=5)
    guided = Purifier(model, "ddpm", t_star=12, guidance=g)(x, seed=5)
    assert torch.equal(plain, guided)
    # …and a non-zero scale does change the result (the test above could not pass vacuously).
    g2 = AGDMGuidance(aux, AGDMConfig(scale=1e4)) if kind == "agdm" else GDMPGuidance(
        GDMPConfig(distance=kind.split("-")[1], guide_scale=1e6))
    assert (Purifier(model, "ddpm", t_star=12, guidance=g2)(x, seed=5) - plain).abs().max() > 1e-4


def _fd_grad(f, u, idx, h=1e-6):
    out = []
    for j in idx:
        e = torch.zeros_like(u).flatten()
        e[j] = h
        e = e.view_as(u)
        out.append(float((f(u + e) - f(u - e)).sum()) / (2 * h))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("view,jacobian", [("x_t", "exact"), ("tweedie", "exact"), ("tweedie", "scaled_identity")])
def test_agdm_guidance_matches_finite_differences(tiny, view, jacobian):
    """The guidance's value: s·∇_u J(v(u)); with the scaled-identity Tweedie view ε is the sampler's, held fixed."""
    model, aux = tiny
    model64 = EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).double().eval()
    aux64 = copy.deepcopy(aux).double()
    cfg = AGDMConfig(scale=3.0, view=view, tweedie_jacobian=jacobian, feature_layer="features", lambda_feat=2.0)
    guid = AGDMGuidance(aux64, cfg)
    x_in = _x().double()
    hook = guid.bind(x_in, model64, derive_seeds(0, torch.arange(3)))
    u = (2 * _x().double() - 1) * 0.9
    i = 20
    eps_u = model64.eps_at_index(u, i)
    g = hook(u, eps_u, i)
    with torch.no_grad():
        logits_in, r = guid.tap(x_in)
        y_hat = logits_in.argmax(1)
    abar = model64.schedule.abar(i)

    def J(v_u):
        with torch.no_grad():
            if view == "x_t":
                v = (v_u + 1) / 2
            else:
                eps = model64.eps_at_index(v_u, i) if jacobian == "exact" else eps_u
                x0 = (v_u - math.sqrt(1 - abar) * eps) / math.sqrt(abar)
                v = (x0.clamp(-1, 1) + 1) / 2
            logits, h = guid.tap(v)
            return class_log_prob(logits, y_hat) - 2.0 * feature_distance(h, r)

    idx = [0, 17, 64, 100, 191]
    fd = 3.0 * _fd_grad(J, u, idx)
    assert torch.allclose(g.flatten()[idx], fd, rtol=1e-4, atol=1e-8), (g.flatten()[idx], fd)


def test_gdmp_mse_guidance_closed_form(tiny):
    """−MSE per-sample mean: ∇_u = −2(u − a_i)/N; target a_i = √ᾱ_i·u_in + √(1−ᾱ_i)·ξ(seed, i, GUIDANCE_TARGET)."""
    model, _ = tiny
    cfg = GDMPConfig(distance="mse", guide_scale=1000.0, ptb=8.0, reduction="per_sample_mean")
    x_in, seeds = _x(), derive_seeds(3, torch.arange(3))
    hook = GDMPGuidance(cfg).bind(x_in, model, seeds, round=0)
    u, i = torch.randn(3, 1, 8, 8), 10
    g = hook(u, None, i)
    abar = model.schedule.abar(i)
    a = math.sqrt(abar) * (2 * x_in - 1) + math.sqrt(1 - abar) * normal_ref(seeds, (3, 1, 8, 8), i, GUIDANCE_TARGET)
    expect = cfg.scale_at(abar) * (-2 * (u - a) / 64)
    assert torch.allclose(g, expect, rtol=1e-5, atol=1e-6)


def test_terms():
    a = torch.rand(2, 1, 16, 16)
    assert torch.allclose(ssim(a, a), torch.ones(2))
    assert float(ssim(a, 1 - a).max()) < 0.9
    assert torch.allclose(mse(a, a + 1), torch.ones(2))
    assert torch.allclose(mse(a, a + 1, "global_mean"), torch.full((2,), 0.5))
    h = torch.randn(4, 7)
    assert torch.allclose(feature_distance(h, 2 * h, "cosine"), torch.zeros(4), atol=1e-6)
    with pytest.raises(ValueError):
        feature_distance(h, h, "nope")
    with pytest.raises(ValueError):
        AGDMConfig(view="nope").validate()


def test_exact_gradients_flow_through_guidance_second_order(tiny):
    """gradcheck (fp64) of a guided purification w.r.t. its input: the attack sees the guidance's dependence on
    x_adv (targets, features) and on the state, differentiated twice through φ."""
    _, aux = tiny
    torch.manual_seed(0)
    model64 = EpsDiffusion(SmallUNet(1, 8, (1,)), image_size=8, channels=1).double().eval()
    aux64 = SmallCNN(1, 10, 2).double().eval()
    for p in aux64.parameters():  # no ReLU kinks at the probe points: smooth enough for finite differences
        p.data.mul_(0.5)
    guid = AGDMGuidance(aux64, AGDMConfig(scale=50.0, feature_layer="features"))
    pur = Purifier(model64, "ddpm", t_star=3, guidance=guid)
    pur.config  # noqa: B018
    x = (_x(1).double() * 0.5 + 0.25).requires_grad_(True)
    seeds = torch.tensor([11])
    assert torch.autograd.gradcheck(lambda v: pur(v, seed=seeds), (x,), eps=1e-6, atol=1e-5, rtol=1e-3)
    # detach mode: g is a constant for the attacker, so the gradient differs from the exact one
    exact = torch.autograd.grad(pur(x, seed=seeds).sum(), x)[0]
    det = Purifier(model64, "ddpm", t_star=3, guidance=AGDMGuidance(aux64, AGDMConfig(
        scale=50.0, feature_layer="features", guidance_grad="detach")))
    detached = torch.autograd.grad(det(x, seed=seeds).sum(), x)[0]
    assert (exact - detached).abs().max() > 1e-8


def _smooth(net: torch.nn.Module) -> torch.nn.Module:
    """A copy with ReLU → SiLU and max → average pooling: at s = 1e4 over 60 steps the guidance's second-order
    dependence on the state crosses ReLU kinks within ±1e-6, where no finite difference is meaningful."""
    net = copy.deepcopy(net)
    for name, m in list(net.named_modules()):
        for cname, c in list(m.named_children()):
            if isinstance(c, torch.nn.ReLU):
                setattr(m, cname, torch.nn.SiLU())
            elif isinstance(c, torch.nn.MaxPool2d):
                setattr(m, cname, torch.nn.AvgPool2d(c.kernel_size))
    return net


@pytest.mark.parametrize("grad", ["full", pytest.param("autograd", marks=pytest.mark.slow)])
@pytest.mark.parametrize("view,jacobian", [("tweedie", "scaled_identity"), ("x_t", "scaled_identity"),
                                           ("tweedie", "exact")])
def test_attack_gradient_passes_finite_differences_at_large_scale_and_t_star(tiny, one_torch_thread, view,
                                                                              jacobian, grad):
    """At s = 1e4 and t* = 60 the attack gradient (full / autograd) is the exact derivative of the purification for
    every view: the scaled-identity Tweedie view holds ε fixed only inside the guidance's own ∇_u, while the
    attack still differentiates the guidance's value through ε_θ (before: relative error 3.9e-4, stable over h)."""
    _, aux = tiny
    torch.manual_seed(0)
    model64 = EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).double().eval()
    cfg = AGDMConfig(scale=1e4, view=view, tweedie_jacobian=jacobian, feature_layer="features")
    pur = Purifier(model64, "ddpm", t_star=60, grad=grad, guidance=AGDMGuidance(_smooth(aux).double(), cfg))
    seeds = torch.tensor([3])
    r = finite_difference_check(lambda v: pur(v, seed=seeds), _x(1).double(), hs=(1e-6, 1e-7, 1e-8))
    assert r.ok, (r.details["verdict"], r.details["errors"])


def _digits_point():
    """A held-out digit moved off flat regions (0.9·x + 0.05 + U(0, 0.02)): on exactly constant patches φ's
    max-pools tie, a kink at the very point where no gradient is the derivative."""
    from fastpurify.zoo import digits

    x = digits().val_data()[0][:1].double()
    return x * 0.9 + 0.05 + 0.02 * torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)


def _digits_fd(settings: dict, t_star):
    from fastpurify.methods import build_method
    from fastpurify.zoo import digits, digits_aux

    pur = build_method("agdm", digits().diffusion.double(), digits_aux().double(), t_star=t_star, settings=settings)
    seeds = torch.tensor([5])
    return finite_difference_check(lambda v: pur(v, seed=seeds), _digits_point(), hs=(1e-6, 1e-7, 1e-8, 1e-9))


def test_digits_tweedie_setting_of_the_tuning_grid_has_an_exact_attack_gradient(one_torch_thread):
    """The 'view=tweedie' entry `compare --tune` evaluates (s 3000, t* 20), and the same view at s 1e4, t* 60, on
    the embedded models (before: relative errors 2.4e-2 and 1.6e-1, stable over h)."""
    from fastpurify.evaluation.compare import agdm_grid, default_settings

    grid = {label: (settings, t) for label, settings, t in agdm_grid(*default_settings("agdm"))}
    settings, t_star = grid["view=tweedie"]
    assert settings["agdm"].view == "tweedie" and settings["agdm"].tweedie_jacobian == "scaled_identity"
    r = _digits_fd(settings, t_star)
    assert r.ok, (r.details["verdict"], r.details["errors"])
    large = {**settings, "agdm": dataclasses.replace(settings["agdm"], scale=1e4)}
    r = _digits_fd(large, 60)
    assert r.ok, (r.details["verdict"], r.details["errors"])


@pytest.mark.slow
@pytest.mark.parametrize("paper", [False, True])
def test_every_agdm_setting_compare_tunes_over_has_an_exact_attack_gradient(one_torch_thread, paper):
    """Every AGDM entry of `compare --tune`'s grid (and the setting it reports by default) passes the check."""
    from fastpurify.evaluation.compare import agdm_grid, default_settings

    base = default_settings("agdm", paper)
    for label, settings, t_star in [("default", *base), *agdm_grid(*base)]:
        r = _digits_fd(settings, t_star)
        assert r.ok, (label, r.details["verdict"], r.details["errors"])


def test_the_purifier_carries_phi_to_dtype_and_state(tiny):
    """φ is a submodule of an AGDM purifier: .double() converts it (a float64 AGDM purifier runs, which the audit's
    float64 finite-difference check needs), and state_dict() holds it.  Before, φ was a plain attribute of the
    guidance: .double() left it float32 and the purifier raised a dtype error."""
    model, aux = tiny
    pur = Purifier(copy.deepcopy(model), "ddpm", t_star=3, guidance=AGDMGuidance(copy.deepcopy(aux), AGDMConfig(
        scale=50.0, feature_layer="features"))).double()
    assert all(t.dtype == torch.float64 for t in pur.guidance.aux.parameters())
    assert any(k.startswith("guidance.aux.") for k in pur.state_dict())
    out = pur(_x().double(), seed=torch.arange(3))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()


def test_guidance_requires_full_chain_ddpm(tiny):
    model, aux = tiny
    with pytest.raises(ValueError, match="ddpm"):
        Purifier(model, "diffpure", guidance=AGDMGuidance(aux))
    with pytest.raises(ValueError, match="ddpm"):
        Purifier(model, "ddpm", t_star=20, steps=5, guidance=AGDMGuidance(aux))
    with pytest.raises(ValueError, match="feature layer"):
        AGDMGuidance(aux, AGDMConfig(feature_layer="nope"))


def test_multiround_rounds_are_independent_and_batch_invariant(tiny):
    model, _ = tiny
    x = _x(4)
    seeds = derive_seeds(9, torch.arange(4))
    mr = MultiRound([Purifier(model, "ddpm", t_star=5), Purifier(model, "ddpm", t_star=5)])
    full = mr(x, seed=seeds)
    assert torch.allclose(mr(x[2:], seed=seeds[2:]), full[2:], atol=1e-5)
    # round r uses its own noise: two rounds are not the same map applied twice with the same noise
    p = Purifier(model, "ddpm", t_star=5)
    assert (p(p(x, seed=seeds), seed=seeds) - full).abs().max() > 1e-4
    assert torch.allclose(p(p(x, seed=seeds, round=0), seed=seeds, round=1), full, atol=0)


def test_ensemble_vote_and_logits(tiny):
    model, aux = tiny
    p = Purifier(model, "ddpm", t_star=5)
    x = _x(2)
    for agg in ("vote", "logits", "softmax"):
        out = EnsembleClassifier(p, aux, n_runs=3, aggregate=agg, seed=1)(x)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    votes = EnsembleClassifier(p, aux, n_runs=3, aggregate="vote", seed=1)(x).exp()
    assert torch.allclose(votes.sum(1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError):
        EnsembleClassifier(p, aux, aggregate="max")


def test_trades_aux_card_shows_robustness_gain():
    """The shipped auxiliary network: TRADES beats standard training under PGD on the validation split."""
    from fastpurify.zoo import digits_aux
    from fastpurify.zoo.embedded import WEIGHTS_DIR

    card = json.loads((WEIGHTS_DIR / "digits_aux_card.json").read_text())
    m = card["metrics"]
    assert m["aux_trades"]["val_pgd20_acc"] > m["standard_classifier"]["val_pgd20_acc"] + 0.3
    assert m["aux_trades"]["val_clean_acc"] >= 0.9 and card["feature_layer"] == "features"
    assert isinstance(digits_aux(), torch.nn.Module)


@pytest.mark.slow
def test_trades_improves_pgd_accuracy_small_budget():
    """A measured (not recorded) comparison on a small budget: 3 epochs of TRADES vs 3 of standard training."""
    from fastpurify.zoo import embedded as D
    from fastpurify.training.trades import TradesConfig, pgd_accuracy, train_trades

    x, y = D.load_split("train")
    xv, yv = D.load_split("val")
    cfg = TradesConfig(beta=6.0, eps=0.15, steps=3, step_size=0.06, epochs=3, lr=3e-3, seed=0)
    robust = train_trades(D.build_classifier(), x[:640], y[:640], cfg)
    standard = train_trades(D.build_classifier(), x[:640], y[:640], TradesConfig(**{**cfg.as_dict(), "beta": 0.0}))
    assert pgd_accuracy(robust, xv, yv, 0.15, steps=10) > pgd_accuracy(standard, xv, yv, 0.15, steps=10) + 0.1
