"""Samplers against closed forms, driven by the exact ε of Gaussian / point-mass data (tests/utils.GaussianEps)."""

import math

import pytest
import torch

from fastpurify.ops.reference.philox import derive_seeds, normal_ref
from fastpurify.samplers import NoiseStreams, sample_ddim, sample_ddpm, sample_vpsde, vpsde_grid
from fastpurify.schedules import get_ddpm_schedule, get_vpsde_schedule

SHAPE = (4096, 1, 2, 2)  # many independent pixels for distribution checks


def _start(abar, mu, s0, shape=SHAPE, seed=1):
    """Draw from the exact forward marginal N(√ᾱ·mu, ᾱ s0² + 1 − ᾱ)."""
    seeds = derive_seeds(seed, torch.arange(shape[0]))
    z = normal_ref(seeds, shape, step=0, purpose=0).double()
    return math.sqrt(abar) * mu + math.sqrt(abar * s0 ** 2 + 1 - abar) * z, NoiseStreams(seeds, shape)


@pytest.mark.parametrize("variance", ["fixedsmall", "fixedlarge"])
def test_ddpm_point_mass_is_recovered_exactly(variance):
    """Point-mass data: x̂₀ = mu at every step and the last step (i = 0) returns x̂₀, whatever the noise."""
    from tests.utils import GaussianEps

    m = GaussianEps(mu=0.3, s0=0.0)
    u, noise = _start(m.schedule.abar(69), 0.3, 0.0, shape=(8, 1, 3, 3))
    out = sample_ddpm(m, u, list(range(69, -1, -1)), noise=noise, variance=variance, clip_x0=False)
    assert torch.allclose(out, torch.full_like(out, 0.3), atol=1e-10)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_point_mass_and_one_step_tweedie(eta):
    from tests.utils import GaussianEps

    m = GaussianEps(mu=-0.4, s0=0.0)
    u, noise = _start(m.schedule.abar(99), -0.4, 0.0, shape=(8, 1, 3, 3))
    out = sample_ddim(m, u, [99, 59, 19], noise=noise, eta=eta)
    assert torch.allclose(out, torch.full_like(out, -0.4), atol=1e-10)
    # One jump to j = −1 is exactly the Tweedie estimate (u − √(1−ᾱ)ε)/√ᾱ, for any data distribution.
    g = GaussianEps(mu=0.1, s0=0.5)
    abar = g.schedule.abar(49)
    one = sample_ddim(g, u, [49], noise=noise, eta=eta)
    tweedie = (u - math.sqrt(1 - abar) * g.eps_at_index(u, 49)) / math.sqrt(abar)
    assert torch.allclose(one, tweedie, atol=1e-12)


def test_ddpm_one_step_matches_posterior_mean_and_variance():
    """One ancestral step from a fixed u: sample mean = μ̃(u, x̂₀), sample variance = β̃_i (fixedsmall)."""
    from tests.utils import GaussianEps

    m = GaussianEps(mu=0.2, s0=0.3)
    i, sched = 50, get_ddpm_schedule()
    u = torch.full(SHAPE, 0.5, dtype=torch.float64)
    _, noise = _start(sched.abar(i), 0.2, 0.3)
    out = sample_ddpm(m, u, [i], noise=noise, clip_x0=False)
    abar, abar_prev, beta = sched.abar(i), sched.abar(i - 1), float(sched.betas[i])
    x0 = (0.5 - math.sqrt(1 - abar) * float(m.eps_at_index(u[:1], i).flatten()[0])) / math.sqrt(abar)
    mean = beta * math.sqrt(abar_prev) / (1 - abar) * x0 + (1 - abar_prev) * math.sqrt(1 - beta) / (1 - abar) * 0.5
    n = out.numel()
    assert abs(float(out.mean()) - mean) < 5 * math.sqrt(sched.posterior_variance(i) / n)
    assert abs(float(out.var()) / sched.posterior_variance(i) - 1) < 0.05


@pytest.mark.parametrize("sampler", ["ddpm", "ddim_eta1", "vpsde"])
def test_stochastic_samplers_recover_gaussian_data(sampler):
    """Exact score of N(mu, s0²): the reverse process maps the forward marginal at t* back to N(mu, s0²)."""
    from tests.utils import GaussianEps

    mu, s0 = 0.25, 0.3
    m = GaussianEps(mu=mu, s0=s0)
    if sampler == "vpsde":
        sde = get_vpsde_schedule()
        u, noise = _start(sde.abar(0.3), mu, s0)
        out = sample_vpsde(m, u, vpsde_grid(0.3, 1e-3, 1e-5), noise=noise, sde=sde)
    elif sampler == "ddpm":
        u, noise = _start(m.schedule.abar(299), mu, s0)
        out = sample_ddpm(m, u, list(range(299, -1, -1)), noise=noise, clip_x0=False)
    else:
        u, noise = _start(m.schedule.abar(299), mu, s0)
        out = sample_ddim(m, u, list(range(299, -1, -1)), noise=noise, eta=1.0)
    n = out.numel()
    assert abs(float(out.mean()) - mu) < 4 * s0 / math.sqrt(n)
    assert abs(float(out.std()) / s0 - 1) < 0.04


def test_ddim_eta0_is_deterministic_and_contracts_toward_data_mean():
    from tests.utils import GaussianEps

    m = GaussianEps(mu=0.0, s0=0.5)
    u, noise = _start(m.schedule.abar(199), 0.0, 0.5)
    a = sample_ddim(m, u, list(range(199, -1, -20)), noise=noise, eta=0.0)
    b = sample_ddim(m, u, list(range(199, -1, -20)), noise=None, eta=0.0)  # η = 0 never draws noise
    c = sample_ddim(m, u, list(range(199, -1, -20)), noise=_start(0.5, 0.0, 0.5, seed=7)[1], eta=0.0)
    assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(ValueError, match="draws noise"):
        sample_ddim(m, u, [199, 99], noise=None, eta=0.5)
    # For Gaussian data the η = 0 map is linear, u ↦ c·u; with many steps it approaches N(0, s0²).
    assert abs(float(a.std()) / 0.5 - 1) < 0.05
