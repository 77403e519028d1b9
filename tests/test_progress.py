"""The demo's time estimate counts the right work: a backward through the purifier for every step × EOT draw of an
attack whose gradient passes through it (EM included), a forward only for BPDA, none for the classifier or φ alone."""

from fastpurify.attacks.adaptive import AttackSpec
from fastpurify.evaluation.progress import Costs, plan
from fastpurify.evaluation.protocol import ProtocolConfig


def test_plan_counts_purifier_backwards_by_attack_kind():
    cfg = ProtocolConfig(eps=0.1, n_reevals=3, n_select=2, large_eps=None)
    n, draws = 5, 3 + 2
    base = plan([], n, cfg)
    assert (base.forward_rows, base.gradient_rows) == (3 * n, 0)
    for kind in ("pgd", "apgd", "em", "per_step", "joint"):
        p = plan([AttackSpec(kind, kind=kind, steps=4, eot=2)], n, cfg)
        assert (p.forward_rows, p.gradient_rows) == (3 * n + draws * n, 4 * 2 * n), kind
    for kind in ("blind", "aux", "forward_only"):
        p = plan([AttackSpec(kind, kind=kind, steps=4, eot=2)], n, cfg)
        assert (p.forward_rows, p.gradient_rows) == (3 * n + draws * n, 0), kind
    p = plan([AttackSpec("bpda", grad="bpda", steps=4, eot=2)], n, cfg)
    assert (p.forward_rows, p.gradient_rows) == (3 * n + draws * n + 4 * 2 * n, 0)
    assert p.seconds(Costs(forward=1.0, gradient=10.0)) == p.forward_rows


def test_plan_adds_the_large_eps_check():
    cfg = ProtocolConfig(eps=0.1, n_reevals=2, n_select=2, large_eps=0.5, large_eps_n=3, large_eps_steps=7)
    p = plan([], 10, cfg)
    assert (p.forward_rows, p.gradient_rows) == (2 * 10 + 4 * 3, 7 * 3)
