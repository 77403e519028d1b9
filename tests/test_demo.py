import json

import pytest
import torch

from fastpurify.evaluation.demo import format_table, run_demo, wilson_ci
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small tensors: OpenMP workers only stall on 2 shared cores


def test_demo_writes_report_and_grid(tmp_path):
    """A tiny run of the demo pipeline (the full demo is `fastpurify demo`); numbers are real, only smaller."""
    report = run_demo(tmp_path, n=6, eps=0.1, steps=2, eot=1, n_eval=2, preset="ddim", steps_undefended=5,
                      sanity_n=3, sanity_steps=1)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    assert [(r["method"], r["grad_mode"]) for r in saved["results"]] == [
        ("none", "autograd"), ("ddim", "full"), ("ddim-bpda", "bpda")]
    for r in saved["results"]:
        assert 0 <= r["clean_acc"] <= 1 and 0 <= r["robust_acc"] <= 1
    for pur in saved["results"][1:]:
        assert pur["robust"]["worst"] <= pur["robust"]["mean"] <= 1 and "majority" in pur["robust"]
        assert len(pur["per_sample"]["adv_preds"]) == 6 and len(pur["per_sample"]["adv_preds"][0]) == 2
    assert "bpda" in saved["results"][2]["grad_label"] and saved["results"][1]["attack_stats"]["loss"]
    names = [c["name"] for c in saved["sanity"]["checks"]]
    assert names == ["undefended_near_zero", "large_eps_near_zero", "bpda_not_stronger", "no_zero_gradients"]
    assert saved["sanity"]["large_eps"]["n_examples"] == 3
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(saved)
    assert "ddim-bpda" in table and "grad=full" in table and "no_zero_gradients" in table


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


def test_wilson_interval():
    lo, hi = wilson_ci(0.5, 100)
    assert 0.40 < lo < 0.41 and 0.59 < hi < 0.60
    assert wilson_ci(1.0, 10)[1] == 1.0
