"""Full audits (slow lane: `pytest -m slow tests/test_audit_slow.py`): every zoo entry through the CLI gives its
expected verdict; honest DiffPure is audited at a budget where its exact attacks converge (16 images, 40 steps,
escalated up to 160: PGD-CE still falls 4-6 points from 20 to 40 and from 40 to 80 steps on the digits, so the
CLI's default 20 steps ends 'not converged', which is right); the leaderboard page is written."""

import json
from pathlib import Path

import pytest

from fastpurify.evaluation.audit.cli import main as audit_main

pytestmark = pytest.mark.slow

ZOO = Path(__file__).resolve().parent.parent / "examples" / "defences"
EXPECTED = {"noisy_blur": "reliable", "rounding_8bit": "not reliable", "straight_through": "not reliable",
            "detached_guidance": "not reliable", "very_noisy": "not reliable", "jpeg": "not reliable",
            "diffpure": "reliable"}
REASON = {"rounding_8bit": "zero_gradient_elements", "straight_through": "gradient_matches_finite_differences",
          "detached_guidance": "gradient_matches_finite_differences", "very_noisy": "gradient_consistent_across_draws",
          "jpeg": "zero_gradient_elements"}


@pytest.mark.parametrize("entry", sorted(EXPECTED))
def test_zoo_entry_gets_its_verdict_at_cli_budgets(entry, tmp_path):
    extra = ["--batched", "--n", "16", "--steps", "40", "--eps-curve", ""] if entry == "diffpure" else []
    assert audit_main([f"{ZOO / entry}.py:build", "--out", str(tmp_path / "out"), *extra]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    if EXPECTED[entry] == "reliable":
        assert report["verdict"].startswith("reliable"), report["verdict"]
    else:
        assert report["verdict"].startswith("not reliable") and REASON[entry] in report["verdict"]


def test_leaderboard_page_is_written(tmp_path):
    from fastpurify.evaluation.audit.leaderboard import main

    out = tmp_path / "page.txt"
    assert main(["--out", str(out), "--n", "4", "--steps", "2", "--sampler-steps", "2", "--n-eval", "2",
                 "--max-eot", "2", "--only", "diffpure"]) == 0
    text = out.read_text()
    assert "| diffpure |" in text and "Verdicts in full" in text and "Cost:" in text


def test_leaderboard_page_from_split_runs(tmp_path):
    """Runs split over processes (one --only each, a shared --reports folder) make one page; different budgets are
    refused (one protocol per page)."""
    from fastpurify.evaluation.audit.leaderboard import main

    tiny = ["--n", "4", "--steps", "2", "--sampler-steps", "2", "--n-eval", "2", "--max-eot", "2"]
    reports, out = tmp_path / "reports", tmp_path / "page.txt"
    assert main(["--out", str(tmp_path / "a.txt"), "--reports", str(reports), *tiny, "--only", "diffpure"]) == 0
    assert main(["--out", str(out), "--from-reports", str(reports)]) == 0
    text = out.read_text()
    assert "| diffpure |" in text and "attack steps 2" in text and "Not audited yet" in text
    other = json.loads((reports / "diffpure.json").read_text())
    other["defence"], other["settings"]["steps"] = "multiround", 3
    (reports / "multiround.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="different budgets"):
        main(["--out", str(out), "--from-reports", str(reports)])
