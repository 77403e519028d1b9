"""Trust, second order: the protocol never leans towards the defence, and its checks can fail where they matter.

Cascaded attacks run on every sample not already at the floor; APGD-EOT returns a candidate for every sample;
every attack (cascaded and component attacks included) is compared with exact PGD/APGD on the pipeline, by paired
statistics; convergence is judged paired; tuning ignores settings that fail a check; the small mends (clean-correct
samples only, no dangling 'see its check', eval mode, majority ties, derived preset descriptions)."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fastpurify.attacks import AttackSpec, Defence, default_attacks, reevaluate
from fastpurify.attacks.apgd import checkpoints
from fastpurify.evaluation.checks import check_notes, masking_checks
from fastpurify.evaluation.protocol import ProtocolConfig, evaluate
from fastpurify.evaluation.stats import paired_drop, summarize
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------- synthetic records
def _records(outcomes: dict, half: dict | None = None, draws: int = 5) -> list[dict]:
    """Records of n samples (label 1) from per-attack (n, N) correctness lists; half: attack → half-steps ones."""
    n = len(next(iter(outcomes.values())))
    recs = []
    for b in range(n):
        attacks = {}
        for name, rows in outcomes.items():
            a = {"preds": [1 if c else 0 for c in rows[b]]}
            if half and name in half:
                a["half_preds"] = [1 if c else 0 for c in half[name][b]]
            attacks[name] = a
        recs.append({"label": 1, "attacks": attacks})
    return recs


def _rows(specs, outcomes):
    return [{"attack": s.name, "spec": s.as_dict(), "n": len(outcomes[s.name]),
             "mean": float(torch.tensor(outcomes[s.name], dtype=torch.float64).mean())} for s in specs]


def _checks(defence, specs, outcomes, half=None):
    stats = {s.name: {"zero_grad_elem_frac_max": 0.0} for s in specs}
    rows = _rows(specs, outcomes)
    cfg = ProtocolConfig(eps=0.1)
    checks = masking_checks(defence, specs, rows, stats, None, cfg, records=_records(outcomes, half))
    return {c["name"]: c for c in checks}


def _acc(n, k, draws=5):
    """n samples: the first k correct on every draw, the rest wrong on every draw."""
    return [[1] * draws if b < k else [0] * draws for b in range(n)]


AGDM = SimpleNamespace(name="agdm", randomized=True, aux=True, variants={"detach": None}, robust_classifier=False,
                       forward_noise_known=True)
PURIFIER = SimpleNamespace(name="p", randomized=True, aux=None, variants={}, robust_classifier=False,
                           forward_noise_known=True)


def test_cascaded_detached_and_adjoint_attacks_are_compared_with_exact_pgd():
    """A detached-guidance or adjoint attack at 0 % against exact PGD at 90 % must fail a check (it used to be
    filtered out of the comparison for being cascaded)."""
    specs = [AttackSpec("pgd-ce"), AttackSpec("pgd-detach", variant="detach", cascade=True),
             AttackSpec("adjoint", grad="adjoint", cascade=True)]
    out = {"pgd-ce": _acc(20, 18), "pgd-detach": _acc(20, 0), "adjoint": _acc(20, 0)}
    checks = _checks(AGDM, specs, out)
    for name in ("pgd-detach", "adjoint"):
        c = checks[f"{name}_not_stronger_than_exact"]
        assert c["passed"] is False and c["category"] == "masking" and "weaker" in c["reason"], c


def test_attacks_on_phi_beating_exact_pgd_say_the_white_box_gradient_is_uninformative():
    """AGDM's pattern: exact PGD leaves 77 %, the joint loss and φ alone 50 %.  The reference is exact PGD on the
    pipeline (not 'joint'), and the report says what it means instead of 'all checks pass'."""
    specs = [AttackSpec("pgd-ce"), AttackSpec("aux-ce", kind="aux"), AttackSpec("joint", kind="joint"),
             AttackSpec("pgd-detach", variant="detach", cascade=True)]
    out = {"pgd-ce": _acc(64, 49), "aux-ce": _acc(64, 32), "joint": _acc(64, 32), "pgd-detach": _acc(64, 49)}
    checks = _checks(AGDM, specs, out)
    for name in ("aux-ce", "joint"):
        c = checks[f"{name}_not_stronger_than_exact"]
        assert c["passed"] is False and "uninformative" in c["reason"], c
    assert checks["pgd-detach_not_stronger_than_exact"]["passed"] is True
    notes = check_notes(list(checks.values()))
    assert "all checks pass" not in notes and any("rests on the attacks on the auxiliary network" in n for n in notes)


def _down(n, k_down, draws=5):
    """(half, full): identical except k_down samples, each correct on 1 or 2 more draws with half the steps."""
    full = [[1] * draws if b < 16 else [0] * draws for b in range(n)]
    half = [list(r) for r in full]
    for j in range(k_down):
        half[16 + j][: 1 + j % 2] = [1] * (1 + j % 2)
    return half, full


def test_convergence_is_judged_by_the_paired_interval_of_the_drop():
    """8.4 points down with half the steps, 18 samples down and none up: the unpaired Wilson half-width (~10
    points) called this converged; the paired 95 % interval does not reach ≤ 3 points, so it is not."""
    half, full = _down(64, 18)
    d = paired_drop(torch.tensor(half), torch.tensor(full))
    assert d["drop"] == pytest.approx(27 / 320) and d["down"] == 18 and d["up"] == 0 and d["ci95"][0] > 0.03
    checks = _checks(PURIFIER, [AttackSpec("pgd-ce")], {"pgd-ce": full}, half={"pgd-ce": half})
    c = checks["pgd-ce_converged"]
    assert c["passed"] is False and c["category"] == "convergence" and c["value"] == d["ci95"][1]
    same = _checks(PURIFIER, [AttackSpec("pgd-ce")], {"pgd-ce": full}, half={"pgd-ce": full})
    assert same["pgd-ce_converged"]["passed"] is True  # no sample moved: the drop is shown small


def test_a_cascaded_attack_is_judged_on_the_scale_of_the_reported_figure():
    """A cascaded attack that ran on 8 of 64 samples (the other 56 at the floor: wrong on every draw, 0 at any
    length) and lost one draw of one sample with more steps moves the robust accuracy by 0.3 points: converged.
    Judged within its 8 samples the same drop read 2.5 points with an upper end above 3, and the attack was
    escalated and failed again and again (the audit of DiffPure: 'pgd-margin@40 on 5 samples: drop 0.300')."""
    full = [[1] * 5 if b < 8 else [0] * 5 for b in range(64)]
    half = [list(r) for r in full]
    half[0][0] = 1
    full[0][0] = 0
    d_subset = paired_drop(torch.tensor(half[:8]), torch.tensor(full[:8]))
    d_all = paired_drop(torch.tensor(half[:8]), torch.tensor(full[:8]), floor=56)
    assert d_subset["ci95"][1] > 0.03 and d_all["drop"] == pytest.approx(0.2 / 64) and d_all["ci95"][1] <= 0.03
    assert d_all["n"] == 64 and d_all["floor"] == 56
    specs = [AttackSpec("pgd-ce"), AttackSpec("pgd-margin", loss="margin", cascade=True)]
    recs = _records({"pgd-ce": full, "pgd-margin": full}, half={"pgd-ce": full, "pgd-margin": half})
    for r in recs[8:]:
        del r["attacks"]["pgd-margin"]  # skipped: at the floor
    rows = _rows(specs, {"pgd-ce": full, "pgd-margin": full[:8]})
    checks = {c["name"]: c for c in masking_checks(PURIFIER, specs, rows, {s.name: {"zero_grad_elem_frac_max": 0.0}
                                                                             for s in specs}, None,
                                                   ProtocolConfig(eps=0.1), records=recs)}
    c = checks["pgd-margin_converged"]
    assert c["passed"] is True and "56 samples at the floor" in c["detail"]


def test_a_cascaded_restart_is_no_reference_for_the_stronger_checks():
    """Attacks on φ alone at 30 % against exact PGD at 80 %: flagged, even though the cascaded margin restart (an
    exact attack too) ran only on the samples φ's attacks left standing and agrees with them there.  With the
    restart as a reference the check passed (the audit's AGDM row read 'reliable' with φ 40 points below PGD)."""
    specs = [AttackSpec("pgd-ce"), AttackSpec("aux-ce", kind="aux"),
             AttackSpec("pgd-margin", loss="margin", cascade=True)]
    out = {"pgd-ce": _acc(20, 16), "aux-ce": _acc(20, 6), "pgd-margin": _acc(20, 6)}
    recs = _records(out)
    for r in recs[6:]:
        del r["attacks"]["pgd-margin"]  # at the floor after aux-ce: skipped by the restart
    rows = _rows(specs, out)
    checks = {c["name"]: c for c in masking_checks(AGDM, specs, rows, {s.name: {"zero_grad_elem_frac_max": 0.0}
                                                                        for s in specs}, None,
                                                   ProtocolConfig(eps=0.1), records=recs)}
    c = checks["aux-ce_not_stronger_than_exact"]
    assert c["passed"] is False and c["detail"].startswith("pgd-ce accuracy") and "auxiliary" in c["reason"]
    assert "pgd-margin_not_stronger_than_exact" not in checks  # exact itself: neither reference nor judged


def test_a_transfer_attack_a_few_points_stronger_fails_the_paired_check():
    specs = [AttackSpec("pgd-ce"), AttackSpec("bpda", grad="bpda")]
    half, full = _down(64, 18)  # bpda below pgd-ce by 8.4 points, consistently per sample
    checks = _checks(PURIFIER, specs, {"pgd-ce": half, "bpda": full})
    assert checks["bpda_not_stronger_than_exact"]["passed"] is False


def test_a_skipped_escalation_leaves_no_dangling_reference():
    """An escalated cascaded attack that was skipped (every sample at the floor) must not be pointed at."""
    half, full = _down(64, 18)
    specs = [AttackSpec("pgd-ce"), AttackSpec("pgd-margin", loss="margin", steps=2, cascade=True),
             AttackSpec("pgd-margin@4", loss="margin", steps=4, cascade=True)]
    skipped = {"attack": "pgd-margin@4", "spec": specs[2].as_dict(), "skipped": "every sample already wrong"}
    checks = _checks(PURIFIER, specs[:2], {"pgd-ce": full, "pgd-margin": full}, half={"pgd-margin": half})
    # with the queued rerun: the escalated spec is known to the checks but did not run
    stats = {s.name: {"zero_grad_elem_frac_max": 0.0} for s in specs[:2]}
    rows = _rows(specs[:2], {"pgd-ce": full, "pgd-margin": full}) + [skipped]
    got = masking_checks(PURIFIER, specs, rows, stats, None, ProtocolConfig(eps=0.1),
                         records=_records({"pgd-ce": full, "pgd-margin": full}, {"pgd-margin": half}))
    c = next(c for c in got if c["name"] == "pgd-margin_converged")
    assert "see its check" not in c["detail"] and c["passed"] is None and "skipped" in c["detail"]
    assert checks["pgd-margin_converged"]["passed"] is False  # without the queued rerun: a plain failure


# ------------------------------------------------------------------------------------------------- protocol
class SeedBit(nn.Module):
    """A 'purifier' whose output is 0 or 1 everywhere by the parity of the noise seed: a coin flip per draw."""

    def forward(self, x, seed=None, grad=None, trace=None):
        bit = (torch.as_tensor(seed) % 2).to(x).view(-1, *[1] * (x.dim() - 1))
        return x * 0 + bit


class MeanClassifier(nn.Module):
    def forward(self, x):
        m = x.flatten(1).mean(1, keepdim=True)
        return torch.cat([0.5 - m, m - 0.5, -torch.ones_like(m)], 1)


def test_cascaded_attacks_run_on_every_sample_not_at_the_floor():
    """A sample wrong on every selection draw can be right on report draws: the cascaded attack must run on it.
    Only samples wrong on every selection *and* report draw are skipped (their reported accuracy is already 0)."""
    n, ids = 24, torch.arange(24)
    x, y = torch.rand(n, 1, 4, 4), torch.ones(n, dtype=torch.long)
    d = Defence("coin", MeanClassifier(), SeedBit())
    cfg = ProtocolConfig(eps=0.0, n_reevals=4, n_select=1, large_eps=None)
    r = evaluate(d, x, y, ids, [AttackSpec("pgd-margin", loss="margin", steps=1, eot=1, cascade=True),
                                AttackSpec("pgd-ce", steps=1, eot=1)], cfg)
    assert [row["attack"] for row in r["attacks"]] == ["pgd-ce", "pgd-margin"]  # cascades after the others
    fwd = d.forward_fn()
    sel = torch.tensor(reevaluate(fwd, x, y, ids, 1, run_seed=0, selection=True)["correct"]).bool().any(1)
    rep = torch.tensor(reevaluate(fwd, x, y, ids, 4, run_seed=0)["correct"]).bool().any(1)
    cascade = r["attacks"][1]
    assert cascade["n_attacked"] == int((sel | rep).sum()) and cascade["n_skipped"] == int((~sel & ~rep).sum())
    assert cascade["n_attacked"] > int(sel.sum())  # more than the samples 'not broken on selection draws'


def test_large_eps_and_undefended_checks_count_clean_correct_samples_only():
    torch.manual_seed(0)
    clf = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    x = torch.rand(8, 1, 4, 4)
    with torch.no_grad():
        pred = clf(x).argmax(1)
    y = torch.where(torch.arange(8) < 4, pred, (pred + 1) % 3)  # the last four misclassified clean
    from fastpurify.evaluation.fixtures import NoisyBlur

    d = Defence("blur", clf, NoisyBlur(a=0.0, sigma=0.0))
    cfg = ProtocolConfig(eps=0.0, n_reevals=2, large_eps=0.5, large_eps_n=8, large_eps_steps=1)
    r = evaluate(d, x, y, torch.arange(8), [AttackSpec("pgd-ce", steps=1, eot=1),
                                            AttackSpec("blind", kind="blind", steps=1, eot=1)], cfg)
    assert r["large_eps"]["n_examples"] == 4
    blind = next(row for row in r["attacks"] if row["attack"] == "blind")
    assert blind["undefended_n"] == 4 and blind["undefended_acc"] == 1.0  # eps 0: nothing changes on those four


def test_majority_ties_are_not_robust():
    preds, y = torch.tensor([[0, 1], [1, 1], [0, 2]]), torch.tensor([0, 1, 0])
    assert summarize(preds, y)["majority"] == pytest.approx(1 / 3)

    def fwd(x, seeds):  # predictions 0, 1 on draws 0, 1 by seed parity: a 1-1 tie for each sample
        return nn.functional.one_hot(seeds % 2, 3).double()

    assert reevaluate(fwd, torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), torch.arange(4), 2)["majority"] < 1


def test_defence_puts_its_networks_in_eval_mode():
    clf, aux, pur = nn.Dropout(0.5).train(), nn.BatchNorm1d(3).train(), nn.Dropout(0.5).train()
    d = Defence("d", clf, pur, aux=aux, variants={"v": nn.Dropout(0.1).train()})
    assert not any(m.training for m in (clf, aux, pur, d.variants["v"]))


# ------------------------------------------------------------------------------------------------ APGD-EOT
def test_apgd_checkpoints_are_the_papers():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(20) == [5, 9, 12, 14, 16, 18, 19]


def test_apgd_is_in_the_default_ensemble_and_exact():
    for d in (PURIFIER, SimpleNamespace(randomized=False, aux=None, variants={})):
        by = {a.name: a for a in default_attacks(d, steps=3, eot=2)}
        for name, loss in (("apgd-ce", "ce"), ("apgd-dlr", "dlr")):
            a = by[name]
            assert a.kind == "apgd" and a.loss == loss and a.exact and a.reference and not a.cascade


@pytest.fixture(scope="module")
def digits_clf():
    from fastpurify.zoo import digits

    m = digits()
    x, y = m.test_data()
    return m.classifier, x[:8], y[:8]


def test_apgd_returns_an_attacked_candidate_for_every_sample(digits_clf):
    """Even for a sample misclassified clean (never attacked by AutoAttack's standard run)."""
    from fastpurify.attacks import run_attack

    clf, x, y = digits_clf
    y = y.clone()
    y[:2] = (y[:2] + 1) % 10  # two samples wrong clean
    d = Defence("none", clf)
    for loss in ("ce", "dlr"):
        x_adv, st = run_attack(d, AttackSpec(f"apgd-{loss}", kind="apgd", loss=loss, steps=10, eot=1), x, y,
                               torch.arange(8), eps=0.15)
        moved = (x_adv - x).flatten(1).abs().amax(1)
        assert bool((moved > 0).all()) and float(moved.max()) <= 0.15 + 1e-6, loss
        assert len(st["eta"]) == 8 and st["checkpoints"] == checkpoints(10)
    with torch.no_grad():
        assert (clf(x_adv).argmax(1) == y).float().mean() < (clf(x).argmax(1) == y).float().mean()


def test_autoattack_adapter_says_what_it_returns_and_attacks_every_sample(digits_clf):
    pytest.importorskip("pyautoattack")
    from fastpurify.attacks import run_autoattack

    clf, x, y = digits_clf
    y = y.clone()
    y[:2] = (y[:2] + 1) % 10
    kw = {"eps": 0.05, "version": "rand", "n_reevals": 1, "bs": 8, "n_iter": 3, "eot_iter": 1,
          "library": "pyautoattack"}
    per = run_autoattack(clf, x, y, **kw)
    assert per["returned_clean"] == 0 and "every sample attacked" in per["returns"]
    std = run_autoattack(clf, x, y, candidates="standard", **kw)
    assert std["returned_clean"] >= 2 and "clean image" in std["returns"]  # the two wrong-clean samples at least


# ---------------------------------------------------------------------------------------- compare and presets
def test_tuning_never_chooses_a_setting_that_fails_a_check():
    from fastpurify.evaluation.compare import choose, frontier_label

    rows = [{"label": "t*=70", "robust": 0.5, "clean": 0.95, "failed_checks": ["large_eps_near_zero"]},
            {"label": "t*=20", "robust": 0.5, "clean": 0.95, "failed_checks": []},
            {"label": "t*=10", "robust": 0.4, "clean": 0.85, "failed_checks": []}]
    for r in rows:
        r["eligible"] = r["clean"] >= 0.9 and not r["failed_checks"]
    rows[1]["robust"] = 0.45  # the failing setting is the best and first: still not chosen
    assert choose(rows) == 1 and choose([rows[0], rows[2]]) is None
    assert "FAILED large_eps_near_zero" in frontier_label("agdm", rows[0], {})


def test_preset_description_follows_the_settings_that_ran():
    from fastpurify.evaluation.defences import build_defence
    from fastpurify.zoo import digits, digits_aux

    m = digits()
    d = build_defence("agdm", m.diffusion, m.classifier, digits_aux(), t_star=20)
    text = json.dumps(d.describe(), ensure_ascii=False)
    assert "t* = 20 steps" in text and "t* = 70" not in text
