"""The attack harness: PGD-EOT (chunking and batch invariance, ℓ∞/ℓ2, fixed noise), re-evaluation,
and the PurifiedClassifier contract AutoAttack / torchattacks rely on."""

import pytest
import torch

from fastpurify import PurifiedClassifier, Purifier
from fastpurify.attacks import (
    PGDConfig,
    as_forward,
    eot_gradient,
    pgd_eot,
    reevaluate,
    run_autoattack,
)
from fastpurify.models import EpsDiffusion, SmallCNN, SmallUNet
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pc64():
    """A float64 purified classifier (tiny UNet, DDPM 6 steps): sign steps are then stable to summation order."""
    torch.manual_seed(0)
    m = EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).double().eval()
    return PurifiedClassifier(Purifier(m, "ddpm", t_star=6), SmallCNN(1, 10, 8).double())


def _batch(n=4):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64), torch.randint(0, 10, (n,), generator=g)


def test_eot_chunking_and_batch_size_do_not_change_the_attack(pc64):
    x, y = _batch()
    ids = torch.arange(4) + 100
    fwd = as_forward(pc64)
    runs = {c: pgd_eot(fwd, x, y, ids, PGDConfig(0.1, 3, 0.03, eot=3, eot_chunk=c), run_seed=1) for c in (1, 5, None)}
    assert float((runs[None] - x).abs().max()) > 0.05
    torch.testing.assert_close(runs[1], runs[None], atol=1e-12, rtol=0)
    torch.testing.assert_close(runs[5], runs[None], atol=1e-12, rtol=0)
    # A sample attacked alone (same id) follows the same path: its noise depends on (run seed, id, draw) only.
    alone = pgd_eot(fwd, x[2:3], y[2:3], ids[2:3], PGDConfig(0.1, 3, 0.03, eot=3), run_seed=1)
    torch.testing.assert_close(alone, runs[None][2:3], atol=1e-12, rtol=0)


def test_eot_gradient_averages_fresh_draws(pc64):
    x, y = _batch(2)
    ids = torch.arange(2)
    fwd = as_forward(pc64)
    g1 = eot_gradient(fwd, x, y, ids, 0, step=0, eot=1)
    g1b = eot_gradient(fwd, x, y, ids, 0, step=1, eot=1)  # another step: other draws
    assert float((g1 - g1b).abs().max()) > 1e-6
    fixed = [eot_gradient(fwd, x, y, ids, 0, step=k, eot=1, fixed=True) for k in (0, 5)]
    assert torch.equal(fixed[0], fixed[1])  # fixed noise: the same draw at every step


@pytest.mark.parametrize("l2_step", ["normalized", "sign"])
def test_l2_pgd_stays_in_the_ball(pc64, l2_step):
    x, y = _batch()
    cfg = PGDConfig(0.5, 3, 0.2, norm="l2", l2_step=l2_step, random_start=True)
    x_adv = pgd_eot(as_forward(pc64), x, y, torch.arange(4), cfg)
    d = (x_adv - x).flatten(1).norm(dim=1)
    assert float(d.max()) <= 0.5 + 1e-9 and float(d.min()) > 0.1
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1


def test_linf_random_start_is_per_sample(pc64):
    x, y = _batch()
    cfg = PGDConfig(0.1, 0, 0.01, random_start=True)
    ids = torch.arange(4)
    full = pgd_eot(as_forward(pc64), x, y, ids, cfg)
    part = pgd_eot(as_forward(pc64), x[1:3], y[1:3], ids[1:3], cfg)
    assert torch.equal(full[1:3], part) and 0.05 < float((full - x).abs().max()) <= 0.1 + 1e-12


def test_bad_configs():
    with pytest.raises(ValueError, match="norm"):
        PGDConfig(0.1, 1, 0.1, norm="l1")
    with pytest.raises(ValueError, match="eot = 1"):
        PGDConfig(0.1, 1, 0.1, eot=4, fixed_noise=True)


def test_reevaluate_metrics_and_per_sample_records():
    """Sample 0 always right, 1 right 2 of 3 times, 2 never: mean 5/9, worst 1/3, majority 2/3 (votes)."""
    table = {0: [3, 3, 3], 1: [1, 1, 4], 2: [0, 5, 5]}

    def forward(x, seeds):
        trial = int(forward.calls)
        forward.calls += 1
        logits = torch.zeros(x.shape[0], 10)
        for row, i in enumerate(x[:, 0, 0, 0].long().tolist()):
            logits[row, table[i][trial]] = 1.0
        return logits

    forward.calls = 0
    x = torch.arange(3.0).view(3, 1, 1, 1)
    r = reevaluate(forward, x, torch.tensor([3, 1, 2]), torch.arange(3), 3)
    assert r["mean"] == pytest.approx(5 / 9) and r["worst"] == pytest.approx(1 / 3)
    assert r["majority"] == pytest.approx(2 / 3) and r["correct"] == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    assert r["preds"][2] == [0, 5, 5] and r["ids"] == [0, 1, 2]


def test_reevaluation_trials_are_fresh_and_fixed_noise_replays(pc64):
    x, y = _batch(2)
    seen = []

    def fwd(xb, seeds):
        seen.append(seeds.clone())
        return pc64(xb, seed=seeds)

    reevaluate(fwd, x, y, torch.arange(2), 3)
    assert len({tuple(s.tolist()) for s in seen}) == 3
    seen.clear()
    r = reevaluate(fwd, x, y, torch.arange(2), 2, fixed_noise=True)
    assert torch.equal(seen[0], seen[1]) and r["worst"] == r["mean"]


def test_zero_gradients_are_reported_by_pgd():
    """A classifier with a piecewise-constant input path (rounding) gives zero gradients: PGD must say so."""
    clf = SmallCNN(1, 10, 8).double()
    stats = {}
    x, y = _batch()
    pgd_eot(lambda xb, s: clf(torch.round(xb * 4) / 4), x, y, torch.arange(4), PGDConfig(0.1, 2, 0.05), stats=stats)
    assert stats["zero_grad_frac"] == 1.0 and len(stats["loss"]) == 2


def test_purified_classifier_meets_the_attack_library_contract(pc64):
    """What AutoAttack/torchattacks do with a model: device from the first parameter, eval(), repeated calls on
    inputs that require grad, logits (B, classes); stochastic per call unless seeded."""
    x, _ = _batch(2)
    assert next(pc64.parameters()).device == x.device
    pc64.eval()
    a, b = pc64(x), pc64(x)
    assert a.shape == (2, 10) and float((a - b).abs().max()) > 0  # randomized: check_randomized fires, as intended
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(pc64(xr).sum(), xr)
    assert float(g.abs().sum()) > 0
    fixed = PurifiedClassifier(pc64.purifier, pc64.classifier, seed=11)
    assert torch.equal(fixed(x), fixed(x)) and fixed.describe()["noise"] == "fixed (seed 11)"


@pytest.fixture(scope="module")
def digits_pc():
    """A purified classifier that classifies (embedded digits, DDIM 3 steps from t* 60): attacks must move it."""
    from fastpurify.zoo import digits

    m = digits()
    x, y = m.test_data()
    return PurifiedClassifier(Purifier(m, "ddim", t_star=60, steps=3), m.classifier), x[:8], y[:8]


def _clean_and_after(model, x, y, x_adv):
    ids = torch.arange(len(x))
    clean = reevaluate(as_forward(model), x, y, ids, 2)["mean"]
    robust = reevaluate(as_forward(model), x_adv, y, ids, 2)["mean"]
    return clean, robust


def _untouched(model):
    assert not any(m.training for m in model.modules()), "an attack left a module in train mode"
    assert all(p.grad is None for p in model.parameters()), "an attack accumulated parameter gradients"


@pytest.mark.parametrize("library", ["pyautoattack", "autoattack"])
def test_autoattack_rand_breaks_a_model_that_classifies(digits_pc, library):
    pytest.importorskip(library)
    model, x, y = digits_pc
    r = run_autoattack(model, x, y, eps=0.15, version="rand", n_reevals=2, bs=8, n_iter=4, eot_iter=2,
                       library=library)
    clean, robust = _clean_and_after(model, x, y, r["x_adv"])
    assert clean >= 0.75 and robust < clean - 0.2, (clean, robust)
    assert r["robust"]["mean"] == robust and r["attack"]["library"] == library and r["attack"]["eot_iter"] == 2
    assert float((r["x_adv"] - x).abs().max()) <= 0.15 + 1e-6
    _untouched(model)


@pytest.mark.parametrize("name", ["PGD", "EOTPGD", "APGD"])
def test_torchattacks_break_a_model_that_classifies(digits_pc, name):
    torchattacks = pytest.importorskip("torchattacks")
    from fastpurify.attacks import run_torchattacks

    model, x, y = digits_pc
    kw = {"PGD": dict(alpha=0.05, steps=4), "EOTPGD": dict(alpha=0.05, steps=4, eot_iter=2),
          "APGD": dict(steps=4, eot_iter=2, n_restarts=1)}[name]
    atk = getattr(torchattacks, name)(model, eps=0.15, **kw)
    r = run_torchattacks(atk, model, x, y, n_reevals=2)
    clean, robust = _clean_and_after(model, x, y, r["x_adv"])
    assert clean >= 0.75 and robust < clean - 0.2, (name, clean, robust)
    assert float((r["x_adv"] - x).abs().max()) <= 0.15 + 1e-6
    _untouched(model)
