"""The finite-difference gradient check (fastpurify.evaluation.gradcheck) on functions whose gradient is known to be
exact, wrong, masked or undefined at the point."""

import pytest
import torch

from fastpurify.evaluation.gradcheck import GradCheckResult, finite_difference_check


def _x(n=2, seed=0):
    return torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 0.8 + 0.1


def _smooth(x):
    return torch.tanh(3 * x.flip(-1)) * torch.sin(2 * x) + 0.3 * x.sum((1, 2, 3), keepdim=True) * x


class _ScaledBackward(torch.autograd.Function):
    """_smooth's value with its gradient multiplied by (1 + rel): a gradient that is wrong by a known amount."""

    @staticmethod
    def forward(ctx, x, rel):
        ctx.save_for_backward(x)
        ctx.rel = rel
        return _smooth(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xx = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(_smooth(xx), xx, grad)
        return g * (1 + ctx.rel), None


def test_exact_gradient_passes():
    r = finite_difference_check(_smooth, _x())
    assert isinstance(r, GradCheckResult) and r.ok, r.details["verdict"]
    assert r.value <= r.threshold and r.details["stable"] and r.details["differentiable"]


@pytest.mark.parametrize("rel", [1e-2, 1e-4])
def test_wrong_gradient_fails_with_stable_differences(rel):
    r = finite_difference_check(lambda v: _ScaledBackward.apply(v, rel), _x())
    assert not r.ok and r.details["stable"] and r.details["differentiable"]
    assert rel / 3 < r.value < 3 * rel
    assert "disagrees with stable finite differences" in r.details["verdict"]


def test_eight_bit_rounding_with_straight_through_gradient_is_flagged():
    """Rounding to 8 bits, identity backward: finite differences are 0 between levels, the gradient is not."""
    def rounded(v):
        return v + (torch.round(v * 255) / 255 - v).detach()

    r = finite_difference_check(rounded, _x(), hs=(1e-7, 1e-8, 1e-9))
    assert not r.ok and r.value > 0.5, r.details


def test_no_grad_purifier_reattached_straight_through_is_flagged():
    """Purify under no_grad, re-attach the input: the gradient is the identity, not the purifier's derivative."""
    def reattached(v):
        with torch.no_grad():
            y = _smooth(v)
        return v + (y - v).detach()

    r = finite_difference_check(reattached, _x())
    assert not r.ok and r.details["stable"], r.details["verdict"]


def test_output_without_gradient_path_is_a_zero_gradient():
    r = finite_difference_check(lambda v: _smooth(v).detach(), _x())
    assert not r.ok and r.details["no_grad_path"] and r.value == pytest.approx(1.0)
    assert "no gradient path" in r.details["verdict"]


def test_kink_at_the_point_is_reported_as_such():
    """relu at exact zeros: central differences are stable yet no gradient is the derivative there."""
    x = _x()
    x[:, :, :2] = 0.0
    r = finite_difference_check(lambda v: torch.relu(v - 0.0) * 2 + torch.relu(-v), x)
    assert not r.ok and not r.details["differentiable"]
    assert "kink at this very point" in r.details["verdict"]


def test_randomness_must_be_fixed_and_float64_required():
    with pytest.raises(ValueError, match="fix its randomness"):
        finite_difference_check(lambda v: v + 1e-3 * torch.randn_like(v), _x())
    with pytest.raises(ValueError, match="float64"):
        finite_difference_check(lambda v: _smooth(v).float(), _x())
    with pytest.raises(ValueError, match="two step sizes"):
        finite_difference_check(_smooth, _x(), hs=(1e-6,))


def test_the_check_is_deterministic_in_its_seed():
    a = finite_difference_check(lambda v: _ScaledBackward.apply(v, 1e-3), _x(), seed=4)
    b = finite_difference_check(lambda v: _ScaledBackward.apply(v, 1e-3), _x(), seed=4)
    c = finite_difference_check(lambda v: _ScaledBackward.apply(v, 1e-3), _x(), seed=5)
    assert a.details["directional_ad"] == b.details["directional_ad"] != c.details["directional_ad"]


@pytest.mark.slow
@pytest.mark.parametrize("paper", [False, True])
@pytest.mark.parametrize("name", ["diffpure", "gdmp-mse", "multiround", "agdm"])
def test_every_purifier_the_compare_reports_has_an_exact_attack_gradient(name, paper):
    """The purifiers `fastpurify compare` reports (budget and paper settings) on the embedded models, in float64 at
    a held-out digit moved off flat regions (max-pool ties there are kinks at the point itself)."""
    from fastpurify.evaluation.compare import default_settings
    from fastpurify.methods import build_method
    from fastpurify.zoo import digits, digits_aux

    models = digits()
    settings, t_star = default_settings(name, paper)
    aux = digits_aux().double() if name == "agdm" else None
    pur = build_method(name, models.diffusion.double(), aux, t_star=t_star, settings=settings)
    x = models.val_data()[0][:1].double()
    x = x * 0.9 + 0.05 + 0.02 * torch.rand(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    seeds = torch.tensor([5])
    r = finite_difference_check(lambda v: pur(v, seed=seeds), x, hs=(1e-6, 1e-7, 1e-8, 1e-9))
    assert r.ok, (r.details["verdict"], r.details["errors"])
