import json

import pytest
import torch

from fastpurify.evaluation.demo import format_table, run_demo
from fastpurify.evaluation.stats import summarize, wilson_ci
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_demo_writes_report_and_grid(tmp_path):
    """A tiny run of the demo pipeline (the full demo is `fastpurify demo`); numbers are real, only smaller."""
    report = run_demo(tmp_path, n=4, eps=0.1, steps=1, eot=1, n_eval=2, n_select=1, sampler_steps=2,
                      large_eps_n=2, large_eps_steps=1, log=lambda m: None)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    none, pur = saved["results"]
    assert none["defence"]["defence"] == "none" and pur["defence"]["defence"] == "diffpure"
    ran = [a["attack"] for a in pur["attacks"]]  # cascaded attacks last; escalated reruns ('name@steps') may join
    assert [a for a in ran if "@" not in a] == ["pgd-ce", "apgd-ce", "apgd-dlr", "bpda", "blind", "forward-only",
                                                "pgd-margin"]
    assert pur["n_reevals"] == 2 and none["n_reevals"] == 1 and pur["nfe_defense"] == 2
    for r in saved["results"]:
        assert 0 <= r["ensemble"]["worst"] <= r["ensemble"]["mean"] <= 1 and len(r["records"]) == 4
    names = {c["name"] for c in pur["checks"]}
    assert {"zero_gradient_elements", "bpda_not_stronger_than_exact", "large_eps_near_zero",
            "undefended_near_zero"} <= names
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(saved)
    assert "**ensemble**" in table and "bpda" in table and "zero_gradient_elements" in table
    assert (tmp_path / "report.md").read_text().startswith("fastpurify demo")


def test_pgd_breaks_the_undefended_classifier():
    """Sanity check of the harness: at the demo ε the undefended classifier falls to ~0 %."""
    from fastpurify.attacks import PGDConfig, pgd_eot
    from fastpurify.zoo import digits

    m = digits()
    x, y = m.test_data()
    x, y = x[:64], y[:64]
    x_adv = pgd_eot(lambda xb, s: m.classifier(xb), x, y, torch.arange(64), PGDConfig(0.15, 50, 0.0075))
    assert float((x_adv - x).abs().max()) <= 0.15 + 1e-6 and float(x_adv.min()) >= 0
    with torch.no_grad():
        assert float((m.classifier(x_adv).argmax(1) == y).float().mean()) <= 0.05


def test_wilson_interval_and_summary():
    lo, hi = wilson_ci(0.5, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60
    assert wilson_ci(1.0, 10)[1] == 1.0
    s = summarize(torch.tensor([[1, 1, 2], [0, 0, 0], [3, 1, 3]]), torch.tensor([1, 0, 1]))
    assert s["mean"] == pytest.approx(6 / 9) and s["worst"] == pytest.approx(1 / 3)
    assert s["majority"] == pytest.approx(2 / 3) and s["n"] == 3 and len(s["mean_ci95"]) == 2
