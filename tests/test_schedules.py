import math

import pytest

from fastpurify.schedules import get_ddpm_schedule, get_vpsde_schedule, respaced_indices, vpsde_grid


def test_ddpm_schedule_closed_form():
    s = get_ddpm_schedule()
    assert s.T == 1000 and s.betas[0] == 1e-4 and abs(float(s.betas[-1]) - 0.02) < 1e-15
    # ᾱ_i = ∏(1 − β_j); β_i linear → log ᾱ_i is a sum we can check at a few indices.
    for i in (0, 69, 99, 999):
        expect = math.prod(1 - (1e-4 + j * (0.02 - 1e-4) / 999) for j in range(i + 1))
        assert abs(s.abar(i) - expect) < 1e-12
    assert s.abar(-1) == 1.0
    assert s.posterior_variance(0) == 0.0
    assert s.step_variance(0, "fixedlarge") == s.posterior_variance(1)
    assert s.step_variance(5, "fixedlarge") == float(s.betas[5])


def test_noise_levels_quoted_in_methods():
    """docs/METHODS.md §2: s* = 0.1 → √ᾱ ≈ 0.947, std ≈ 0.322;  s* = 0.15 → 0.887 and 0.461."""
    s, sde = get_ddpm_schedule(), get_vpsde_schedule()
    for k, a, sig in ((100, 0.947, 0.322), (150, 0.887, 0.461)):
        assert abs(math.sqrt(sde.abar(k / 1000)) - a) < 1e-3 and abs(sde.sigma(k / 1000) - sig) < 1e-3
        assert abs(math.sqrt(s.abar(k - 1)) - a) < 2e-3 and abs(math.sqrt(1 - s.abar(k - 1)) - sig) < 2e-3


def test_vpsde_matches_discrete_schedule():
    """The DDPM schedule is the VP-SDE discretised with N = 1000: ᾱ(k/1000) ≈ ᾱ_{k−1}."""
    sde, d = get_vpsde_schedule(), get_ddpm_schedule()
    for k in (10, 100, 500):
        assert abs(sde.abar(k / 1000) - d.abar(k - 1)) / d.abar(k - 1) < 0.01
    assert abs(sde.abar(1.0) - d.abar(999)) / d.abar(999) < 0.1  # ᾱ ≈ 4e-5 there: relative gap grows
    assert sde.beta(0.0) == 0.1 and sde.beta(1.0) == 20.0


@pytest.mark.parametrize("s_star, nfe", [(0.1, 100), (0.075, 75), (0.15, 150)])
def test_vpsde_grid_counts_match_diffpure(s_star, nfe):
    g = vpsde_grid(s_star)
    assert len(g) - 1 == nfe and g[0] == s_star and g[-1] == 1e-5
    assert all(a > b for a, b in zip(g, g[1:]))


def test_respacing_rules():
    assert respaced_indices(100, 5, "trailing") == [99, 79, 59, 39, 19]  # ADBM, docs/METHODS.md §7.1
    assert respaced_indices(125, 5, "lee_kim") == [124, 99, 74, 49, 24]
    assert respaced_indices(30, 1, "lee_kim") == [29]
    assert respaced_indices(100, 3, "lee_kim") == [98, 65, 32]  # the n∤k trap: top index below k−1
    u = respaced_indices(100, 10)
    assert u[0] == 99 and u[-1] == 0 and len(u) == 10
    with pytest.raises(ValueError):
        respaced_indices(10, 11)
    with pytest.raises(ValueError):
        respaced_indices(10, 2, "nope")
