"""EM-weighted EOT (fastpurify/attacks/em_eot.py): it beats plain PGD-EOT where the purifier's randomness splits into
a vulnerable and a non-vulnerable mode, reduces exactly to PGD-EOT with uniform weights, is reproducible and
independent of batch size and chunking, and its weights are a distribution per sample."""

import pytest
import torch
from torch import nn

from fastpurify import ops
from fastpurify.attacks import AttackSpec, Defence, PGDConfig, pgd_eot, reevaluate, run_attack
from fastpurify.attacks.em_eot import em_eot, failure_log_prob, posterior_weights, weighted_eot_pass
from fastpurify.attacks.pgd import _draws, objective_from
from fastpurify.evaluation.audit.run import attack_list
from fastpurify.ops import FORWARD
from fastpurify.zoo import digits
from fastpurify.zoo.embedded import load_split
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODE_STEP, EPS = 1, 0.1  # the Philox step of the mode coin; the ℓ∞ radius of the comparison


class TwoModePurifier(nn.Module):
    """Per draw, a fair coin from the draw's seed picks the identity (the vulnerable mode: the classifier's own
    weakness) or the contrast fold x ↦ 2·round(x) − x (each grey level reflected about the nearer of 0 and 1): the
    same digit with exaggerated contrast, whose derivative is −1 everywhere, so a small perturbation enters with its
    sign flipped.  The fold's draws are hard to fool at EPS and their gradients oppose the identity's: the plain
    EOT mean sums opposing directions.  force: True / False pins every draw to one mode (to measure each mode)."""

    def __init__(self, force: bool | None = None):
        super().__init__()
        self.force = force

    def vulnerable(self, seeds: torch.Tensor) -> torch.Tensor:
        if self.force is not None:
            return torch.full(seeds.shape, self.force)
        return ops.normal(seeds, (seeds.shape[0], 1), step=MODE_STEP, purpose=FORWARD)[:, 0] > 0

    def forward(self, x, seed=None, grad=None, trace=None):
        seeds = torch.as_tensor(seed, dtype=torch.int64).expand(x.shape[0])
        fold = 2 * torch.round(x) - x
        return torch.where(self.vulnerable(seeds).view(-1, 1, 1, 1), x, fold)


def _defence(force=None, dtype=torch.float32):
    return Defence("two-mode", digits().classifier.to(dtype), TwoModePurifier(force))


def _data(n, dtype=torch.float32):
    x, y = load_split("test")
    return x[:n].to(dtype), y[:n], torch.arange(n) + 1000


def test_em_breaks_the_vulnerable_mode_that_plain_eot_dilutes():
    """Same loss (margin: every draw's gradient on one scale), budget, seeds and draws: EM-EOT's candidates are
    wrong on more of N fresh draws than PGD-EOT's, and fall more often on the vulnerable mode's draws."""
    x, y, ids = _data(32)
    d = _defence()
    objective = objective_from(d.forward_fn(), "margin")
    cfg = PGDConfig(EPS, steps=10, step_size=EPS / 4, eot=4, random_start=True)
    runs = {"pgd": pgd_eot(None, x, y, ids, cfg, run_seed=1, objective=objective),
            "em": em_eot(objective, x, y, ids, cfg, run_seed=1)}
    worst = {k: reevaluate(d.forward_fn(), v, y, ids, 8, run_seed=5)["worst"] for k, v in runs.items()}
    vulnerable = {k: reevaluate(_defence(True).forward_fn(), v, y, ids, 4, run_seed=5)["mean"] for k, v in runs.items()}
    clean = reevaluate(d.forward_fn(), x, y, ids, 8, run_seed=5)["worst"]
    # measured: clean 0.84; PGD-EOT 0.53 worst-of-8 (vulnerable mode 0.63); EM-EOT 0.13 (0.25)
    assert clean > 0.75
    assert worst["em"] <= worst["pgd"] - 0.25, worst
    assert vulnerable["em"] <= vulnerable["pgd"] - 0.25, vulnerable


@pytest.mark.parametrize("eot, chunk", [(4, None), (3, 5)])
def test_uniform_weights_give_pgd_eots_iterates_exactly(eot, chunk):
    x, y, ids = _data(6)
    objective = objective_from(_defence().forward_fn(), "margin")
    cfg = PGDConfig(EPS, steps=4, step_size=EPS / 4, eot=eot, random_start=True, eot_chunk=chunk)
    for best_iterate in (True, False):
        c = PGDConfig(**{**cfg.as_dict(), "best_iterate": best_iterate})
        st_pgd, st_em = {}, {}
        ref = pgd_eot(None, x, y, ids, c, run_seed=2, objective=objective, stats=st_pgd)
        got = em_eot(objective, x, y, ids, c, run_seed=2, weighting="uniform", stats=st_em)
        assert torch.equal(got, ref)
        assert st_em["loss"] == st_pgd["loss"] and st_em["best_acc"] == st_pgd["best_acc"]
        assert st_em["effective_draws"] == pytest.approx([eot] * 4, rel=1e-12)
    # the posterior weighting does move elsewhere (else the comparison above would prove nothing)
    assert not torch.equal(em_eot(objective, x, y, ids, cfg, run_seed=2), ref)


def test_reproducible_and_independent_of_batch_size_and_chunking():
    x, y, ids = _data(5, torch.float64)
    objective = objective_from(_defence(dtype=torch.float64).forward_fn(), "margin")
    cfg = PGDConfig(EPS, steps=3, step_size=EPS / 4, eot=4, random_start=True)
    full = em_eot(objective, x, y, ids, cfg, run_seed=3)
    assert torch.equal(em_eot(objective, x, y, ids, cfg, run_seed=3), full)
    assert float((full - x).abs().max()) > EPS / 2
    chunked = em_eot(objective, x, y, ids, PGDConfig(**{**cfg.as_dict(), "eot_chunk": 3}), run_seed=3)
    torch.testing.assert_close(chunked, full, atol=1e-12, rtol=0)
    # a sample attacked alone (same id) follows the same path: its draws depend on (run seed, id, step, draw) only
    alone = em_eot(objective, x[2:4], y[2:4], ids[2:4], cfg, run_seed=3)
    torch.testing.assert_close(alone, full[2:4], atol=1e-12, rtol=0)
    assert not torch.equal(em_eot(objective, x, y, ids, cfg, run_seed=4), full)


def test_weights_are_the_failure_posterior_and_a_distribution():
    g = torch.Generator().manual_seed(0)
    logits, y = 4 * torch.randn(12, 10, generator=g, dtype=torch.float64), torch.randint(0, 10, (12,), generator=g)
    log_p = failure_log_prob(logits, y)
    torch.testing.assert_close(log_p, torch.log1p(-torch.softmax(logits, 1)[torch.arange(12), y]))
    confident = torch.zeros(2, 10, dtype=torch.float64)
    confident[:, 3] = 1000.0  # p underflows in float64, its logarithm stays finite and ordered
    confident[1, 5] = 10.0
    lp = failure_log_prob(confident, torch.tensor([3, 3]))
    assert torch.isfinite(lp).all() and lp[1] > lp[0]
    w = posterior_weights(log_p.view(4, 3))
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(0), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(w, log_p.view(4, 3).exp() / log_p.view(4, 3).exp().sum(0))  # w_r = p_r / Σ p_s
    # on the two-mode purifier: a distribution per sample, and the fold's (confidently right) draws weigh less
    x, y, ids = _data(8)
    cfg = PGDConfig(EPS, steps=1, step_size=EPS / 4, eot=6)
    d = _defence()
    _, _, _, _, weights = weighted_eot_pass(objective_from(d.forward_fn(), "margin"), x, y, ids, 0, 0, cfg,
                                            "posterior")
    torch.testing.assert_close(weights.sum(0), torch.ones(8, dtype=torch.float64))
    _, seeds = _draws(x, y, ids, 0, 0, 6, False)
    vulnerable = d.purifier.vulnerable(seeds).view(6, 8)
    assert float(weights[vulnerable].mean()) > 2 * float(weights[~vulnerable].mean())


def test_run_attack_and_the_audit_wire_it_as_an_exact_reference():
    spec = AttackSpec("em-margin", kind="em", loss="margin", steps=2, eot=2)
    assert spec.exact and spec.reference and not spec.transfer
    assert not AttackSpec("em-bpda", kind="em", grad="bpda").exact
    with pytest.raises(ValueError, match="variant"):
        AttackSpec("em-v", kind="em", variant="detach")
    x, y, ids = _data(3)
    d = _defence()
    x_adv, st = run_attack(d, spec, x, y, ids, eps=EPS, run_seed=0)
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6 and "half_steps_x_adv" in st
    assert len(st["effective_draws"]) == 2 and st["nfe_attack"] is None  # a plain module says no NFE
    with pytest.raises(ValueError, match="weighting"):
        em_eot(objective_from(d.forward_fn()), x, y, ids, PGDConfig(EPS, 1, 0.01, eot=2), weighting="mean")
    with pytest.raises(ValueError, match="fixed_noise"):
        em_eot(objective_from(d.forward_fn()), x, y, ids, PGDConfig(EPS, 1, 0.01, fixed_noise=True))
    # the audit adds it for a randomised black box only
    for randomized, has_em in ((True, True), (False, False)):
        d.purifier.randomized = randomized
        kinds = [a.kind for a in attack_list(d, combined=False, steps=2, eot=2)]
        assert ("em" in kinds) == has_em
