import json

import pytest

from fastpurify.evaluation.compare import format_table, run_compare


@pytest.mark.slow
def test_compare_runs_end_to_end_on_a_tiny_budget(tmp_path):
    """The code path of `fastpurify compare` (real models, real attack, tiny sizes); the full run is the command."""
    report = run_compare(tmp_path, n=3, steps=1, n_eval=2, methods=("none", "agdm", "gdmp-mse", "multiround"),
                         t_sweep=(5,))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert [r["method"] for r in saved["results"]] == ["none", "agdm", "gdmp-mse", "multiround"]
    for r in saved["results"]:
        assert 0 <= r["robust"]["worst"] <= r["robust"]["mean"] <= 1
    agdm = saved["results"][1]
    assert agdm["guidance"]["scale"] > 0 and agdm["nfe"] == 70
    assert saved["t_star_sweep"]["agdm"][0]["t_star"] == 5
    assert "agdm" in format_table(report)
