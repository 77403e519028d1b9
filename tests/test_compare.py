import json

import pytest
import torch
from torch import nn

from fastpurify.attacks import AttackSpec, Defence
from fastpurify.evaluation.compare import cache_key, format_table, run_compare, verdict
from fastpurify.evaluation.protocol import ProtocolConfig


@pytest.mark.slow
def test_compare_runs_end_to_end_on_a_tiny_budget(tmp_path):
    """The code path of `fastpurify compare` (real models, real attacks, tiny sizes); the full run is the command."""
    report = run_compare(tmp_path, n=3, steps=1, eot=1, n_eval=2, methods=("none", "aux", "agdm"),
                         log=lambda m: None)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [r["defence"]["defence"] for r in saved["results"]] == ["none", "aux", "agdm"]
    agdm = saved["results"][2]
    assert {"aux-ce", "aux-margin", "joint", "pgd-detach"} <= {a["attack"] for a in agdm["attacks"]}
    assert "aux_agreement" in agdm["diagnostics"] and any("AGDM" in v for v in saved["verdict"])
    assert "agdm" in format_table(report)
    again = run_compare(tmp_path, n=3, steps=1, eot=1, n_eval=2, methods=("none", "aux", "agdm"),
                        log=lambda m: None)  # cached: the same results, nothing recomputed
    assert again["results"] == saved["results"]


def test_verdict_says_when_agdm_does_not_beat_the_baselines():
    def res(clean, robust, n=64):
        return {"clean": {"mean": clean}, "ensemble": {"mean": robust}, "n_examples": n, "diagnostics": {}}

    lines = verdict({"agdm": res(0.875, 0.406), "aux": res(0.9, 0.406), "diffpure": res(0.88, 0.2)})
    assert lines[0].startswith("AGDM does NOT beat aux") and lines[1].startswith("AGDM beats diffpure")


def test_cache_key_follows_the_defence_flags_and_the_attacks():
    """A cached result is reused only for the same defence as built, the same attacks and the same settings."""
    ids, cfg = torch.arange(4), ProtocolConfig(eps=0.15)
    attacks = [AttackSpec("pgd-ce", steps=20, eot=4)]

    def key(defence=None, attacks=attacks, **kw):
        defence = defence or Defence("d", nn.Identity())
        return cache_key(defence, attacks, **{"split": "test", "ids": ids, "cfg": cfg, "settings": None,
                                              "t_star": None, "x": torch.zeros(4, 1, 2, 2),
                                              "y": torch.zeros(4, dtype=torch.long), "networks": (), **kw})

    assert key() == key()
    assert key(Defence("d", nn.Identity(), robust_classifier=True)) != key()
    assert key(attacks=[AttackSpec("pgd-ce", steps=10, eot=4)]) != key()
    assert key(split="val") != key() and key(ids=torch.arange(5)) != key()
    assert key(cfg=ProtocolConfig(eps=0.1)) != key() and key(t_star=20) != key()


def test_frontier_and_t_star_plots_from_a_tuning_table(tmp_path):
    pytest.importorskip("matplotlib")
    from fastpurify.evaluation.compare import _plot

    def row(label, t_star, robust):
        return {"label": label, "t_star": t_star, "clean": 0.95, "robust": robust, "worst": robust, "failed_checks": []}

    tuning = {"n": 24, "chosen": {"agdm": {"label": "s=3000", "t_star": 20}, "diffpure": {"label": "t*=100"}},
              "grid": {"agdm": [row("s=0", 20, 0.1), row("s=3000", 20, 0.5), row("t*=40", 40, 0.6)],
                       "diffpure": [row("t*=30", 30, 0.1), row("t*=100", 100, 0.5)]}}
    result = {"clean": {"mean": 0.9}, "ensemble": {"mean": 0.4, "mean_ci95": [0.3, 0.5]}}
    assert _plot(tmp_path, {"agdm": result}, tuning)
    assert {p.name for p in tmp_path.iterdir()} == {"compare.png", "frontier.png", "t_star.png"}
