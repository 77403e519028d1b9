"""`fastpurify audit` on the reference zoo (examples/defences) at tiny budgets: each broken defence is flagged for
its own reason, the honest ones are not flagged as masked; bad SPECs and broken modules give one clear error and
write nothing."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from fastpurify.evaluation.audit import AuditError, audit
from fastpurify.evaluation.audit.cli import main as audit_main
from fastpurify.evaluation.audit.diagnostics import eot_needed
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ZOO = Path(__file__).resolve().parent.parent / "examples" / "defences"
TINY = {"n": 8, "steps": 4, "n_reevals": 2, "n_select": 2, "max_eot": 8, "consistency_draws": 4, "large_eps_n": 4,
        "large_eps_steps": 5}


def _audit(entry, **kw):
    r = audit(f"{ZOO / entry}.py:build", **{**TINY, **kw})
    return r, {c["name"]: c for c in r["checks"]}


def _failed(checks, categories=("masking", "noise")):
    return sorted(n for n, c in checks.items() if c["passed"] is False and c["category"] in categories)


def test_rounding_is_flagged_for_zero_gradients():
    r, checks = _audit("rounding_8bit")
    assert r["verdict"].startswith("not reliable") and not r["reliable"]
    assert checks["zero_gradient_elements"]["passed"] is False and checks["zero_gradient_elements"]["value"] == 1.0
    assert "zero_gradient_elements" in r["verdict"]


def test_straight_through_is_flagged_by_finite_differences():
    r, checks = _audit("straight_through")
    assert r["verdict"].startswith("not reliable")
    assert checks["gradient_matches_finite_differences"]["reason"].startswith("straight-through")
    assert checks["gradient_matches_finite_differences_f64"]["passed"] is False
    assert checks["zero_gradient_elements"]["passed"] is True  # not the zero-gradient kind


def test_detached_guidance_is_flagged_as_approximate():
    r, checks = _audit("detached_guidance")
    assert r["verdict"].startswith("not reliable")
    assert checks["gradient_matches_finite_differences"]["reason"].startswith("approximate gradient")
    assert checks["gradient_matches_finite_differences_f64"]["passed"] is False
    assert checks["zero_gradient_elements"]["passed"] is True


def test_very_noisy_defence_is_flagged_by_gradient_consistency():
    r, checks = _audit("very_noisy")
    c = checks["gradient_consistent_across_draws"]
    assert c["passed"] is False and r["gradient_consistency"]["eot_needed"] > TINY["max_eot"]
    assert c["value"] < c["threshold"]  # the threshold is the cosine at which the budget just suffices
    assert r["eot"] == TINY["max_eot"]  # the attacks spent the whole budget
    # its gradient itself is right: not flagged by the finite-difference checks
    assert checks["gradient_matches_finite_differences_f64"]["passed"] is True
    assert "gradient_consistent_across_draws" in r["verdict"]


def test_jpeg_preprocessor_is_flagged_for_zero_gradients_and_bpda():
    r, checks = _audit("jpeg")
    assert r["probe"]["purifier"]["randomized"] is False and r["eot"] == 1
    assert checks["zero_gradient_elements"]["passed"] is False
    assert checks["bpda_not_stronger_than_exact"]["passed"] is False


def test_honest_noisy_blur_is_reliable():
    r, checks = _audit("noisy_blur")
    assert r["verdict"].startswith("reliable"), r["verdict"]
    c = checks["gradient_consistent_across_draws"]
    assert c["passed"] is True and c["value"] >= c["threshold"] and r["eot"] == 1
    assert checks["gradient_matches_finite_differences_f64"]["passed"] is True
    assert r["probe"]["purifier"]["batch_independent"] is True


def test_honest_diffpure_is_not_flagged_as_masked():
    """DiffPure (2 sampler steps, to fit the default lane) as a plain torch module: no masking or noise check
    fails (at 4 attack steps a convergence failure is possible and is not a masking verdict; the full audit
    asserting 'reliable' is in test_audit_slow.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("zoo_diffpure", ZOO / "diffpure.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = audit(modules=mod.build(steps=2), name="diffpure", **{**TINY, "n": 4, "max_eot": 4})
    checks = {c["name"]: c for c in r["checks"]}
    assert _failed(checks) == [], r["verdict"]
    assert checks["gradient_matches_finite_differences_f64"]["passed"] is True


def test_eot_budget_follows_the_cosine_model():
    # m draws: cosine with the mean √(mρ / (mρ + 1 − ρ)) ≥ 0.9  ⇔  m ≥ 4.26 (1 − ρ) / ρ
    assert eot_needed(1.0) == 1 and eot_needed(0.9) == 1 and eot_needed(0.5) == 5
    assert eot_needed(0.1) == 39 and eot_needed(0.0) == float("inf")
    def cos(k, rho):
        return (k * rho / (k * rho + 1 - rho)) ** 0.5

    for rho in (0.05, 0.3, 0.7):
        m = eot_needed(rho)
        assert cos(m, rho) >= 0.9 - 1e-9 and (m == 1 or cos(m - 1, rho) < 0.9)


# ------------------------------------------------------------------------------------------ errors
class _Scale(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def _classifier():
    from fastpurify.zoo import digits

    return digits().classifier


@pytest.mark.parametrize("fn, message", [
    (lambda x: x * float("nan"), "non-finite"),
    (lambda x: x[:, :, :8], "shape"),
    (lambda x: x.mul_(0.5), "modified its input"),
    (lambda x: x + torch.from_numpy(__import__("numpy").random.randn(*x.shape)).float() * 0.1, "torch's generators"),
])
def test_broken_modules_give_one_clear_error(fn, message):
    with pytest.raises(AuditError, match=message):
        audit(modules=(_classifier(), _Scale(fn)), **TINY)


def test_batch_dependent_module_is_reported():
    r = audit(modules=(_classifier(), _Scale(lambda x: 0.8 * x + 0.2 * x.mean(0, keepdim=True))), **TINY)
    assert r["probe"]["purifier"]["batch_independent"] is False
    assert "batch-dependent" in r["verdict"]


def test_one_module_defence_says_bpda_and_blind_are_impossible():
    clf = _classifier()
    r = audit(modules=_Scale(lambda x: clf(x + 0.05 * torch.randn_like(x))), **TINY)
    names = {a["name"] for a in r["attacks"]}
    assert "bpda" not in names and "blind" not in names
    assert "BPDA and the classifier-alone attack are impossible" in r["verdict"]


def test_bad_specs(tmp_path):
    f = tmp_path / "d.py"
    f.write_text("import torch\ndef boom():\n    raise RuntimeError('no weights')\ndef wrong():\n    return 3\n"
                 "x = 1\n")
    cases = [("nocolon", "bad SPEC"), (f"{tmp_path}/missing.py:build", "does not exist"),
             (f"{f}:build", "no attribute 'build'"), (f"{f}:x", "not callable"), (f"{f}:boom", "no weights"),
             (f"{f}:wrong", "returned int"), ("no_such_package_xyz:build", "cannot import")]
    for spec, message in cases:
        with pytest.raises(AuditError, match=message):
            audit(spec, **TINY)


def test_cli_writes_all_or_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--n", "4", "--steps", "2", "--n-eval", "2", "--n-select", "1", "--max-eot", "2", "--out", str(out)]
    assert audit_main([f"{tmp_path}/missing.py:build", *args]) == 2
    assert not out.exists() and "does not exist" in capsys.readouterr().err
    assert audit_main([f"{ZOO / 'jpeg'}.py:build", *args]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"].startswith("not reliable") and "robust_accuracy" in report
    assert (out / "report.md").read_text().splitlines()[2].startswith("**verdict: not reliable")
    assert (out / "grid.png").stat().st_size > 0
    steps = report["plots"]["accuracy_vs_steps"]["pgd-ce"]
    assert [p[0] for p in steps] == [1, 2] and all(lo <= m <= hi for _, m, (lo, hi) in steps)
    assert audit_main([f"{ZOO / 'jpeg'}.py:build", *args]) == 2  # never over an earlier audit
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_batched_mode_is_reproducible_and_says_its_caveat():
    kw = {**TINY, "batched": True}
    a = audit(f"{ZOO / 'noisy_blur'}.py:build", **kw)
    b = audit(f"{ZOO / 'noisy_blur'}.py:build", **kw)
    assert a["protocol"]["records"] == b["protocol"]["records"]  # same seeds, same draws
    assert "--batched" in a["verdict"] and a["probe"]["purifier"]["batch_independent"] is True
    assert a["_purifier"].calls.startswith("whole batches, seeded per call")


def test_a_rows_draw_depends_on_its_seed_alone():
    """Per-row seeding: a row's output is the same alone or in any batch, and the caller's generator is untouched."""
    from fastpurify.evaluation.audit import BlackBoxPurifier
    from fastpurify.evaluation.audit.blackbox import probe

    p = BlackBoxPurifier(_Scale(lambda x: x + torch.randn_like(x)))
    x = torch.rand(3, 1, 16, 16)
    probe(p, x)
    state = torch.get_rng_state()
    both = p(x[:2], seed=torch.tensor([7, 9]))
    alone = p(x[1:2], seed=torch.tensor([9]))
    assert p.randomized and torch.equal(both[1:], alone) and not torch.equal(both[:1], p(x[:1], seed=torch.tensor([8])))
    assert torch.equal(torch.get_rng_state(), state)


def test_a_surrogate_stronger_than_the_exact_gradient_is_flagged():
    """JPEG's rounding stops exact gradients; PGD through a smooth surrogate (the identity) breaks it: flagged."""
    r, checks = _audit("jpeg", surrogate=_Scale(lambda x: x))
    assert "pgd-surrogate" in {a["name"] for a in r["attacks"]} and "surrogate" in r["probe"]
    c = checks["pgd-surrogate_not_stronger_than_exact"]
    assert c["passed"] is False and "pgd-surrogate" in r["verdict"]


def test_transfer_from_a_named_classifier_is_attacked_and_checked_against_exact():
    """A transfer source the user names (here the digits classifier itself, as a file SPEC's pair) gets its own
    attacks; on JPEG (zero gradients) they beat exact PGD and are flagged, on the honest blur they do not."""
    from fastpurify.zoo import digits

    source = digits().classifier
    r, checks = _audit("jpeg", transfer_from=source)
    assert {"transfer-ce", "transfer-margin"} <= {a["name"] for a in r["attacks"]} and "transfer_source" in r["probe"]
    assert checks["transfer-ce_not_stronger_than_exact"]["passed"] is False and "transfer-" in r["verdict"]
    r, checks = _audit("noisy_blur", transfer_from=f"{ZOO / 'noisy_blur'}.py:build")
    assert checks["transfer-ce_not_stronger_than_exact"]["passed"] is not False
    with pytest.raises(AuditError, match="transfer source"):
        _audit("noisy_blur", transfer_from=3)


def test_a_broken_defence_is_reliably_broken_whatever_failed():
    """0 % robust: a failed convergence check can only mean more steps would lower the figure; it cannot go lower.
    A masking failure still reads 'not reliable' (a defect whatever the number)."""
    from fastpurify.evaluation.audit.verdict import verdict

    failed = [{"name": "pgd-ce_converged", "passed": False, "category": "convergence", "reason": "not converged",
               "detail": ""}]
    assert verdict(failed, [], {"mean": 0.0, "mean_ci95": [0.0, 0.19]}).startswith("reliable: the defence is broken")
    assert verdict(failed, [], {"mean": 0.01, "mean_ci95": [0.0, 0.2]}).startswith("not reliable: pgd-ce_converged")
    masked = failed + [{"name": "zero_gradient_elements", "passed": False, "category": "masking", "reason": "zero",
                        "detail": ""}]
    assert verdict(masked, [], {"mean": 0.0, "mean_ci95": [0.0, 0.19]}).startswith("not reliable")


def test_reliable_needs_a_gradient_confirmed_by_finite_differences():
    from fastpurify.evaluation.audit.verdict import verdict

    robust = {"mean": 0.5, "mean_ci95": [0.3, 0.7]}
    fd = [{"name": n, "passed": None, "value": None, "threshold": 0, "detail": "not run: float64 failed",
           "category": "masking", "reason": None}
          for n in ("gradient_matches_finite_differences", "gradient_matches_finite_differences_f64")]
    assert verdict(fd, [], robust).startswith("not reliable: gradient_correctness")
    fd[1] = {**fd[1], "passed": True}
    assert verdict(fd, [], robust).startswith("reliable")


def test_bad_settings_are_refused_before_any_work():
    """AuditSettings refuses a radius, norm or budget that cannot run; an unknown keyword is a TypeError."""
    for bad in ({"eps": 0.0}, {"eps": float("nan")}, {"norm": "l1"}, {"steps": 0}, {"n_reevals": 0}):
        with pytest.raises(AuditError, match=next(iter(bad))):
            audit(f"{ZOO / 'noisy_blur'}.py:build", **{**TINY, **bad})
    with pytest.raises(TypeError):
        audit(f"{ZOO / 'noisy_blur'}.py:build", **TINY, n_draws=3)


def test_unbounded_attack_breaks_honest_defences_and_flags_zero_gradients():
    """An attack free to choose any image (ℓ∞ radius 1) reaches ~0 % on the honest defence and fails on the
    deterministic rounding defence, whose gradient is zero (the protocol's large-ε check runs only for randomised
    defences, so this is the one that sees a deterministic one)."""
    honest, rounding = _audit("noisy_blur")[1], _audit("rounding_8bit")[1]
    assert honest["unbounded_attack_near_zero"]["passed"] is True
    assert rounding["unbounded_attack_near_zero"]["passed"] is False
    jpeg = _audit("jpeg")[0]
    assert jpeg["unbounded"]["eps"] == 1.0 and jpeg["unbounded"]["mean"] > 0.05
