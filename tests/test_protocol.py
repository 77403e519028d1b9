"""The evaluation protocol and the adaptive attacks: losses, objectives, per-sample worst case on selection draws,
masking checks that fire on a masked defence, batch invariance of the records."""

import pytest
import torch
from torch import nn

from fastpurify import Purifier
from fastpurify.attacks import AttackSpec, Defence, default_attacks, run_attack
from fastpurify.attacks.adaptive import objective_for
from fastpurify.attacks.losses import ce_loss, dlr_loss, margin_loss, true_class_margin
from fastpurify.evaluation.protocol import ProtocolConfig, evaluate
from fastpurify.models import EpsDiffusion, SmallCNN, SmallUNet
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_losses_on_hand_made_logits():
    z = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 1.0, 5.0]])
    y = torch.tensor([0, 1])
    assert torch.equal(true_class_margin(z, y), torch.tensor([2.0, -3.0]))
    assert torch.equal(margin_loss(z, y), torch.tensor([-2.0, 3.0]))
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-2.0 / 3.0, 3.0 / 4.0]))
    torch.testing.assert_close(ce_loss(z, y), nn.functional.cross_entropy(z, y, reduction="none"))


@pytest.fixture(scope="module")
def tiny():
    """A float64 tiny defence (DDPM 6 steps): deterministic enough for exact comparisons."""
    torch.manual_seed(0)
    m = EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).double()
    clf = SmallCNN(1, 10, 8).double().eval().requires_grad_(False)
    aux = SmallCNN(1, 10, 8).double().eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 1, 8, 8, generator=g, dtype=torch.float64)
    y = clf(x).argmax(1)  # correctly classified by construction: attacks have something to break
    return Defence("tiny", clf, Purifier(m, "ddpm", t_star=6), aux=aux), x, y


def test_joint_objective_is_the_sum_of_its_terms(tiny):
    d, x, y = tiny
    spec = AttackSpec("joint", kind="joint", weight=0.5, kappa=0.1)
    seeds = torch.arange(4)
    loss, logits = objective_for(d, spec)(x, seeds, y)
    expected = ce_loss(d.logits(x, seeds), y) + 0.5 * (-true_class_margin(d.aux(x), y)).clamp(max=0.1)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, d.logits(x, seeds))


def test_per_step_objective_uses_intermediate_states(tiny):
    d, x, y = tiny
    seeds = torch.arange(4)
    spec = AttackSpec("per-step", kind="per_step", states=3)
    xr = x.clone().requires_grad_(True)
    loss, _ = objective_for(d, spec)(xr, seeds, y)
    (g,) = torch.autograd.grad(loss.sum(), xr)
    # the same loss by hand with autograd: three evenly spaced states of six, plus the output
    trace = []
    xr2 = x.clone().requires_grad_(True)
    logits = d.logits(xr2, seeds, grad="autograd", trace=trace)
    st = [trace[i] + (trace[i].clamp(0, 1) - trace[i]).detach() for i in (0, 2, 5)]  # straight-through clamp
    terms = [ce_loss(d.classifier(s), y) for s in st] + [ce_loss(logits, y)]
    (g2,) = torch.autograd.grad(torch.stack(terms).mean(0).sum(), xr2)
    assert len(trace) == 6
    torch.testing.assert_close(g, g2, rtol=1e-9, atol=1e-12)


class Quantize(nn.Module):
    """A masking 'purifier': rounds to 4 levels (zero gradient everywhere), ignoring seeds."""

    def forward(self, x, seed=None, grad=None):
        return torch.round(x * 3) / 3


def test_masking_checks_fire_on_a_masked_defence(tiny):
    _, x, _ = tiny
    torch.manual_seed(2)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).double().requires_grad_(False)
    y = clf(torch.round(x * 3) / 3).argmax(1)
    d = Defence("quantized", clf, Quantize())
    attacks = [AttackSpec("pgd-ce", steps=4, eot=1), AttackSpec("blind", kind="blind", steps=20, eot=1)]
    r = evaluate(d, x, y, torch.arange(4), attacks, ProtocolConfig(eps=0.3, n_reevals=1, large_eps=None))
    checks = {c["name"]: c for c in r["checks"]}
    assert checks["zero_gradient_elements"]["passed"] is False and checks["zero_gradient_elements"]["value"] == 1.0
    assert r["attacks"][1]["mean"] < r["attacks"][0]["mean"]  # the transfer attack is the stronger one ...
    assert checks["blind_not_stronger_than_exact"]["passed"] is False  # ... and the report says so


def test_ensemble_is_the_per_sample_worst_case_on_selection_draws(tiny):
    d, x, y = tiny
    attacks = [AttackSpec("pgd-ce", steps=2, eot=2), AttackSpec("bpda", grad="bpda", steps=2, eot=2)]
    cfg = ProtocolConfig(eps=0.2, n_reevals=3, n_select=2, large_eps=None)
    r = evaluate(d, x, y, torch.arange(4), attacks, cfg)
    for rec in r["records"]:
        candidates = {"clean": None, **rec["attacks"]}
        chosen = rec["winner"]
        assert chosen in candidates
        sel = {n: a["sel_acc"] for n, a in rec["attacks"].items()}
        if chosen != "clean":
            assert sel[chosen] == min(sel.values())
            assert rec["adv_preds"] == rec["attacks"][chosen]["preds"]  # reported on that candidate's report draws
        assert len(rec["clean_preds"]) == 3 and len(rec["adv_preds"]) == 3
    assert r["ensemble"]["mean"] == pytest.approx(
        sum(sum(rec["adv_correct"]) for rec in r["records"]) / (4 * 3))
    assert sum(r["ensemble"]["winners"].values()) == 4
    assert r["n_select"] == 2 and r["config"]["n_reevals"] == 3


def test_records_do_not_depend_on_the_batch(tiny):
    d, x, y = tiny
    attacks = default_attacks(d, steps=2, eot=2, transfer_steps=3)
    cfg = ProtocolConfig(eps=0.2, n_reevals=2, large_eps=None)
    whole = evaluate(d, x, y, torch.arange(4), attacks, cfg)["records"]
    part = evaluate(d, x[1:3], y[1:3], torch.arange(1, 3), attacks, cfg)["records"]
    assert part == whole[1:3]


def test_every_default_attack_runs_on_a_guided_style_defence(tiny):
    d, x, y = tiny
    d = Defence("tiny", d.classifier, d.purifier, aux=d.aux, variants={"bpda-view": d.purifier})
    attacks = default_attacks(d, steps=2, eot=1, transfer_steps=2, extended=True)
    names = [a.name for a in attacks]
    assert {"pgd-ce", "pgd-margin", "bpda", "blind", "forward-only", "aux-ce", "aux-margin", "joint",
            "pgd-bpda-view", "pgd-dlr", "per-step"} <= set(names)
    for spec in attacks:
        x_adv, st = run_attack(d, spec, x, y, torch.arange(4), eps=0.1)
        assert float((x_adv - x).abs().max()) <= 0.1 + 1e-9 and 0 <= float(x_adv.min()) and float(x_adv.max()) <= 1
        assert len(st["best_acc"]) == spec.steps + 1 and st["seconds"] >= 0


def test_bad_protocol_settings():
    with pytest.raises(ValueError, match="eps"):
        ProtocolConfig(eps=-0.1)
    with pytest.raises(ValueError, match="n_reevals"):
        ProtocolConfig(eps=0.1, n_reevals=0)
    with pytest.raises(ValueError, match="unknown attack kind"):
        AttackSpec("x", kind="magic")
    with pytest.raises(ValueError, match="unknown attack loss"):
        AttackSpec("x", loss="hinge")


def test_convergence_check_fires_when_more_steps_still_help():
    """A linear classifier and a step size that needs all 8 steps to reach the boundary: 4 steps are not enough,
    so the check must say the 8-step figure was still falling."""
    lin = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double().requires_grad_(False)
    lin[1].weight.copy_(torch.stack([torch.ones(16), -torch.ones(16)]).double())
    lin[1].bias.copy_(torch.tensor([-4.0, 4.0], dtype=torch.float64))
    # z_0 − z_1 = 32·x − 8 ∈ [8, 10.2]; each step of 0.05 on every pixel removes 1.6
    x = torch.full((8, 1, 4, 4), 0.5, dtype=torch.float64) + 0.01 * torch.arange(8).view(-1, 1, 1, 1)
    y = torch.zeros(8, dtype=torch.long)
    attacks = [AttackSpec("pgd-ce", steps=8, eot=1, step_size=0.05, random_start=False)]
    r = evaluate(Defence("linear", lin), x, y, torch.arange(8), attacks,
                 ProtocolConfig(eps=0.5, n_reevals=1, large_eps=None))
    check = {c["name"]: c for c in r["checks"]}["pgd-ce_converged"]
    assert r["attacks"][0]["mean"] == 0.0 and r["attacks"][0]["stats"]["half_steps"]["mean"] == 1.0
    assert check["passed"] is False and check["value"] == 1.0
    assert [a["attack"] for a in r["attacks"]] == ["pgd-ce"]  # no escalation unless asked for
    # escalate=1: the attack is rerun at 16 steps, which has converged (8 → 16 steps: 0 % → 0 %)
    r = evaluate(Defence("linear", lin), x, y, torch.arange(8), attacks,
                 ProtocolConfig(eps=0.5, n_reevals=1, large_eps=None, escalate=1))
    checks = {c["name"]: c for c in r["checks"]}
    assert [(a["attack"], a["spec"]["steps"]) for a in r["attacks"]] == [("pgd-ce", 8), ("pgd-ce@16", 16)]
    assert checks["pgd-ce@16_converged"]["passed"] is True
    assert checks["pgd-ce_converged"]["passed"] is None and "rerun as pgd-ce@16" in checks["pgd-ce_converged"]["detail"]
    with pytest.raises(ValueError, match="escalate"):
        ProtocolConfig(eps=0.1, escalate=-1)


def test_random_start_and_forward_noise_use_the_purifiers_backend(tiny):
    """A backend forced on the purifier holds for the attack's own noise (random start, forward-only): the same
    start from the C++ (cpu) and torch backends, and a clear error where the forced backend cannot run."""
    from fastpurify.attacks import random_start
    from fastpurify.attacks.adaptive import pgd_config_for

    d, x, _ = tiny
    model = d.purifier.model
    spec = AttackSpec("pgd-ce", steps=1, eot=1)
    starts = {}
    for backend in ("torch", "cpu"):
        dd = Defence("tiny", d.classifier, Purifier(model, "ddpm", t_star=6, backend=backend))
        cfg = pgd_config_for(spec, dd, eps=0.1, norm="linf")
        assert cfg.backend == backend
        starts[backend] = random_start(x, torch.arange(4), cfg, run_seed=3)
    torch.testing.assert_close(starts["cpu"], starts["torch"], atol=1e-6, rtol=0)
    if not torch.cuda.is_available():
        dd = Defence("tiny", d.classifier, Purifier(model, "ddpm", t_star=6, backend="cuda"))
        with pytest.raises((RuntimeError, ValueError), match="cuda"):
            random_start(x, torch.arange(4), pgd_config_for(spec, dd, eps=0.1, norm="linf"), run_seed=3)
        with pytest.raises((RuntimeError, ValueError), match="cuda"):
            run_attack(dd, AttackSpec("fwd", kind="forward_only", steps=1, eot=1, random_start=False), x,
                       d.classifier(x).argmax(1), torch.arange(4), eps=0.1)


def test_undefended_check_is_skipped_for_an_adversarially_trained_classifier(tiny):
    """'undefended → ~0 %' checks the attack on a standard classifier; behind φ (TRADES) it is not a masking sign."""
    d, x, y = tiny
    attacks = [AttackSpec("pgd-ce", steps=1, eot=1), AttackSpec("blind", kind="blind", steps=1, eot=1)]
    cfg = ProtocolConfig(eps=0.01, n_reevals=1, large_eps=None)
    for robust, expect in ((False, (True, False)), (True, (None,))):
        dd = Defence("tiny", d.classifier, d.purifier, robust_classifier=robust)
        check = {c["name"]: c for c in evaluate(dd, x, y, torch.arange(4), attacks, cfg)["checks"]}
        assert check["undefended_near_zero"]["passed"] in expect


def test_adaptive_attack_check_fires_when_a_component_is_not_attacked(tiny):
    from fastpurify.evaluation.checks import masking_checks

    d, _, _ = tiny
    d = Defence("tiny", d.classifier, d.purifier, aux=d.aux, variants={"detach": d.purifier})
    cfg = ProtocolConfig(eps=0.1)

    def check(attacks):
        checks = masking_checks(d, attacks, [], {}, None, cfg)
        (c,) = [c for c in checks if c["name"] == "adaptive_attacks_for_components"]
        return c

    plain = [AttackSpec("pgd-ce"), AttackSpec("bpda", grad="bpda")]
    c = check(plain)
    assert c["passed"] is False and c["value"] == 2 and "auxiliary" in c["detail"] and "'detach'" in c["detail"]
    c = check(plain + [AttackSpec("joint", kind="joint")])
    assert c["passed"] is False and c["value"] == 1
    assert check(default_attacks(d, steps=1, eot=1))["passed"] is True
    plain_defence = Defence("plain", d.classifier, d.purifier)
    assert not [c for c in masking_checks(plain_defence, plain, [], {}, None, cfg)
                if c["name"] == "adaptive_attacks_for_components"]
