import json

import pytest

from fastpurify.evaluation.compare import format_table, run_compare, verdict


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
