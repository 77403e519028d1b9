"""The masking checks on purifiers with known masking (fastpurify.evaluation.fixtures): each is flagged for the
right reason; the honest fixture and DiffPure (embedded digits models, tiny budget) are not flagged as masked —
a convergence failure there is answered by escalation, not by a masking verdict."""

import pytest
import torch

from fastpurify.attacks import default_attacks
from fastpurify.evaluation.fixtures import masked_defence
from fastpurify.evaluation.protocol import ProtocolConfig, evaluate
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = ProtocolConfig(eps=0.15, n_reevals=2, n_select=2, large_eps_n=4, large_eps_steps=5)


@pytest.fixture(scope="module")
def digits_data():
    from fastpurify.zoo import digits

    m = digits()
    x, y = m.test_data()
    return m, x[:10], y[:10]


def _run(defence, x, y, cfg=CFG, steps=4):
    attacks = [a for a in default_attacks(defence, steps=steps, eot=1, transfer_steps=5)
               if a.kind != "forward_only"]  # the fixtures have no diffusion schedule
    r = evaluate(defence, x, y, torch.arange(len(x)), attacks, cfg)
    return r, {c["name"]: c for c in r["checks"]}


def _masking_failures(checks):
    return [n for n, c in checks.items() if c["passed"] is False and c["category"] == "masking"]


def test_rounding_to_8_bits_is_flagged_for_zero_gradients(digits_data):
    m, x, y = digits_data
    _, checks = _run(masked_defence("rounding", m.classifier), x, y)
    assert checks["zero_gradient_elements"]["passed"] is False and checks["zero_gradient_elements"]["value"] == 1.0
    fd = checks["gradient_matches_finite_differences"]
    assert fd["passed"] is False and fd["reason"].startswith("zero gradient")


def test_no_grad_reattached_purifier_is_flagged_as_straight_through(digits_data):
    m, x, y = digits_data
    _, checks = _run(masked_defence("straight_through", m.classifier), x, y)
    fd = checks["gradient_matches_finite_differences"]
    assert fd["passed"] is False and fd["reason"].startswith("straight-through"), fd
    assert checks["zero_gradient_elements"]["passed"] is True  # not the zero-gradient kind of masking


def test_detached_guidance_claimed_exact_is_flagged_as_an_approximate_gradient(digits_data):
    m, x, y = digits_data
    _, checks = _run(masked_defence("detached", m.classifier), x, y)
    fd = checks["gradient_matches_finite_differences"]
    assert fd["passed"] is False and fd["reason"].startswith("approximate gradient"), fd
    assert checks["zero_gradient_elements"]["passed"] is True


def test_the_honest_fixture_is_not_flagged(digits_data):
    m, x, y = digits_data
    _, checks = _run(masked_defence("none", m.classifier), x, y)
    assert checks["gradient_matches_finite_differences"]["passed"] is True
    assert not _masking_failures(checks), checks


def test_diffpure_is_not_flagged_as_masked_and_escalates_instead(digits_data):
    """DiffPure on the embedded digits model at a tiny budget: no masking verdict; an exact attack that has not
    converged is rerun with twice the steps (the escalation's own check follows it)."""
    from fastpurify.evaluation.defences import build_defence
    from fastpurify.methods import DIGITS

    m, x, y = digits_data
    d = build_defence("diffpure", m.diffusion, m.classifier, settings={**DIGITS["diffpure"], "steps": 4})
    cfg = ProtocolConfig(eps=0.15, n_reevals=2, n_select=2, large_eps_n=4, large_eps_steps=5, escalate=1)
    r = evaluate(d, x[:8], y[:8], torch.arange(8), default_attacks(d, steps=2, eot=1, transfer_steps=5), cfg)
    checks = {c["name"]: c for c in r["checks"]}
    assert not _masking_failures(checks), {n: checks[n] for n in _masking_failures(checks)}
    assert checks["gradient_matches_finite_differences"]["passed"] is True
    assert any("@" in a["attack"] for a in r["attacks"])  # at 2 steps some exact attack had not converged
    for name, c in checks.items():
        if name.endswith("_converged") and c["passed"] is None:  # superseded by its rerun with 2× the steps
            assert "see its check" in c["detail"] or "skipped" in c["detail"]
            base = name.removesuffix("_converged")
            assert any(a["attack"].startswith(base + "@") for a in r["attacks"])


def test_finite_differences_that_change_with_h_give_no_verdict():
    """A strongly guided sampler in float32 (AGDM at scale 3000): finite differences that disagree among step
    sizes neither confirm nor refute the gradient — 'not run', never a masking verdict; a zero gradient is one."""
    from fastpurify.evaluation.checks import _fidelity_check

    f = {"rel_error": 0.62, "h": 0.01, "fd_spread": 0.84, "dtype": "float32", "identity_backward": False,
         "zero_gradient": False, "n": 4, "directions": 2}
    c = _fidelity_check(f, CFG)
    assert c["passed"] is None and c["detail"].startswith("not run")
    assert _fidelity_check({**f, "fd_spread": 0.001}, CFG)["passed"] is False  # stable and wrong: approximate
    assert _fidelity_check({**f, "zero_gradient": True}, CFG)["passed"] is False
