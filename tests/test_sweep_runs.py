"""`fastpurify sweep` end to end on the embedded digits (CPU, tiny budgets, fp64 so that sign steps cannot flip
with summation order): torchrun with 2 gloo ranks equals one process sample for sample, the batch size changes
nothing, a rank SIGKILLed while writing loses nothing and duplicates nothing after a restart with another world
size, and a truncated last line is detected and redone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastpurify.evaluation.sweep import run
from fastpurify.evaluation.sweep.merge import merge, status
from fastpurify.evaluation.sweep.plan import load_config
from fastpurify.evaluation.sweep.records import read_shards, same_outcome
from fastpurify.evaluation.sweep.report import IncompleteSweep, write_report
from fastpurify.evaluation.sweep.shards import DistEnv

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sweep_digits.toml"
# The example config shrunk: 6 images, the classifier alone and a 2-step DDIM, a 2-attack ensemble, N = 2, the
# large-ε check on the first 3 images.
TINY = ['methods=[{name="none"}, {name="ddim", t_star=20, steps=2}]',
        'attacks=[{name="pgd-full", steps=2, eot=1}, {name="pgd-bpda", steps=2, eot=1, grad="bpda"}]',
        "data.n=6", "n_reevals=2", 'dtype="fp64"', "threads=1", "quiet=true", "save_adv=true", "grid=3",
        "large_eps_n=3"]


def _sets(out: Path, *extra) -> list[str]:
    return [f"out={json.dumps(str(out))}", *TINY, *extra]


def _run_here(out: Path, *extra) -> dict:
    threads = torch.get_num_threads()
    try:
        return run(load_config(EXAMPLE, _sets(out, *extra)), env=DistEnv(0, 1, 0, False))
    finally:
        torch.set_num_threads(threads)


def _torchrun(out: Path, nproc: int, *extra, fault: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "fastpurify", "sweep", str(EXAMPLE)]
    for s in _sets(out, *extra):
        cmd += ["--set", s]
    # a 1 s heartbeat: a restart right after a kill waits 3 s (not 90) for the killed ranks' leases to go stale
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FASTPURIFY_SWEEP_HEARTBEAT_S": "1"}
    env.pop("FASTPURIFY_SWEEP_FAULT", None)
    if fault:
        env["FASTPURIFY_SWEEP_FAULT"] = fault
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def _outcomes(out: Path) -> dict:
    mg = merge(out)
    assert mg.complete, status(out)
    return {(m, i): r for m, rows in mg.rows.items() for i, r in rows.items()}


def _assert_same_results(a: Path, b: Path) -> None:
    ra, rb = _outcomes(a), _outcomes(b)
    assert ra.keys() == rb.keys()
    for key in ra:
        assert same_outcome(ra[key], rb[key]), (key, ra[key], rb[key])
        assert ra[key]["adv_preds"] == rb[key]["adv_preds"] and ra[key]["clean_preds"] == rb[key]["clean_preds"]
    assert _table(a) == _table(b)


def _table(out: Path) -> list:
    """The report's accuracy columns (cost columns like seconds per image legitimately differ)."""
    rep = write_report(out)
    return [(r["method"], r["n_examples"], r["clean"], r["robust"],
             {k: {f: v[f] for f in ("mean", "worst", "majority", "wins")} for k, v in r["attacks"].items()})
            for r in rep["results"]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One process, batch size 4."""
    out = tmp_path_factory.mktemp("sweep") / "ref"
    summary = _run_here(out, "batch_size=4")
    assert summary["records"] == 12
    return out


def test_reference_run_and_its_report(reference):
    rows = _outcomes(reference)
    none = [rows[("none", i)] for i in range(6)]
    assert all(r["nfe_defense"] == 0 and r["winner"] in ("clean", "pgd-full", "pgd-bpda") for r in none)
    assert sum(r["clean_correct"][0] for r in none) >= 5  # the classifier is 98.6 % accurate
    ddim = rows[("ddim@20", 0)]
    assert ddim["nfe_defense"] == 2 and ddim["t_star_steps"] == 20 and len(ddim["adv_preds"]) == 2
    assert ddim["linf"] <= 0.15 + 1e-9 and ddim["attacks"].keys() == {"pgd-full", "pgd-bpda"}
    # per-sample worst case: the reported draws are the winner's (report draws are shared by all candidates), and
    # no candidate had fewer correct selection draws than the winner
    for r in rows.values():
        w = r["winner"]
        assert r["adv_preds"] == (r["clean_preds"] if w == "clean" else r["attacks"][w]["preds"])
        if w != "clean":
            assert r["attacks"][w]["sel_acc"] == min(a["sel_acc"] for a in r["attacks"].values())
    # the large-ε check: on those of the first 3 images the randomised method gets right on some clean draw (batch
    # size 4 splits them from the rest)
    right = [i for i in range(3) if rows[("ddim@20", i)]["label"] in rows[("ddim@20", i)]["clean_preds"]]
    assert [i for i in range(6) if "large_eps_preds" in rows[("ddim@20", i)]] == right and right
    assert not any("large_eps_preds" in rows[("none", i)] for i in range(6))
    # records carry what every check needs: the exact attack's half-steps predictions, per sample
    assert all(len(rows[("ddim@20", i)]["attacks"]["pgd-full"]["half_preds"]) == 2 for i in range(6))
    rep = write_report(reference)
    ddim_rep = next(r for r in rep["results"] if r["method"] == "ddim@20")
    checks = {c["name"]: c for c in ddim_rep["checks"]}
    assert checks["pgd-full_converged"]["value"] is not None  # computed over the sweep, paired, from the records
    assert checks["gradient_matches_finite_differences"]["value"] is not None
    md = (reference / "report" / "report.md").read_text()
    assert "ddim@20: pgd-full_converged " in md and "ddim@20: gradient_matches_finite_differences " in md
    large = checks["large_eps_near_zero"]
    assert ddim_rep["large_eps"]["n_examples"] == len(right) and large["value"] == ddim_rep["large_eps"]["mean"]
    assert large["passed"] == (large["value"] <= 0.05) and f"eps 0.5 on {len(right)} " in large["detail"]
    names = sorted(p.name for p in (reference / "report").iterdir())
    assert {"report.json", "report.md", "grid_none.png", "grid_ddim_20.png", "robust_vs_clean.png",
            "accuracy_vs_iterations.png"} <= set(names)
    assert rep["grids"][1]["ids"] == [0, 1, 2] and rep["status"] == "COMPLETE"
    # Rerunning a finished sweep computes nothing.
    assert _run_here(reference, "batch_size=4")["records"] == 0


def test_report_refuses_a_directory_of_an_older_config_schema(reference, tmp_path):
    """A sweep written before the [[attacks]] / protocol keys became AttackSpec's / ProtocolConfig's fields (variant ""
    and n_select 0 for unset) is refused by the report with the reason, not read under the new meaning."""
    from fastpurify.evaluation.sweep import main
    from fastpurify.evaluation.sweep.config import ConfigError

    old = tmp_path / "old"
    shutil.copytree(reference, old, ignore=shutil.ignore_patterns("report", "leases"))
    stored = json.loads((old / "config.json").read_text())
    del stored["identity"]["schema"]
    (old / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="schema 1, this code reads schema 2"):
        write_report(old)
    assert main(["report", str(old)]) == 2 and not (old / "report").exists()

def test_torchrun_two_gloo_ranks_equal_one_process_and_batch_size_changes_nothing(reference, tmp_path):
    out = tmp_path / "w2"
    p = _torchrun(out, 2, "batch_size=1")
    assert p.returncode == 0, p.stderr[-3000:]
    shards = read_shards(out)
    assert [(s.rank, s.attempt) for s in shards] == [(0, 0), (1, 0)] and all(s.done for s in shards)
    ids = [{r["sample_id"] for r in s.records} for s in shards]
    assert not ids[0] & ids[1] and abs(len(ids[0]) - len(ids[1])) <= 1  # disjoint, unpadded
    assert all(r["world_size"] == 2 for s in shards for r in s.records)
    _assert_same_results(reference, out)


def test_sigkill_while_writing_then_restart_with_another_world_size(reference, tmp_path):
    out = tmp_path / "killed"
    p = _torchrun(out, 2, "batch_size=2", fault="r1:kill-mid-line:2")
    assert p.returncode != 0
    r1 = [s for s in read_shards(out) if s.rank == 1]
    assert r1[0].partial_tail and len(r1[0].records) == 2 and r1[0].done is None
    with pytest.raises(IncompleteSweep, match="missing"):
        write_report(out)
    assert write_report(out, partial=True)["status"] == "PARTIAL"
    p = _torchrun(out, 3, "batch_size=3")
    assert p.returncode == 0, p.stderr[-3000:]
    shards = read_shards(out)
    assert sum(len(s.records) for s in shards) == 12  # nothing lost, nothing computed twice
    assert not any(merge(out).duplicates.values())
    _assert_same_results(reference, out)


def test_truncated_last_line_is_detected_and_redone(reference, tmp_path):
    out = tmp_path / "cut"
    shutil.copytree(reference, out)
    shard = next((out / "records").glob("shard-r0-a0.jsonl"))
    data = shard.read_bytes()
    shard.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 30])  # the last line, cut after 30 bytes
    mg = merge(out)
    assert sum(len(v) for v in mg.missing.values()) == 1 and not mg.complete
    lost = next((m, ids[0]) for m, ids in mg.missing.items() if ids)
    summary = _run_here(out, "batch_size=5")
    assert summary["records"] == 1
    new = next(s for s in read_shards(out) if s.attempt == summary["attempt"])
    assert [(r["method"], r["sample_id"]) for r in new.records] == [lost]
    _assert_same_results(reference, out)


def test_attacks_that_do_not_apply_to_a_method_are_left_out(tmp_path):
    """AGDM (with its auxiliary network) and the classifier alone under one ensemble with an attack on φ: the
    classifier alone runs without it, and the report says n/a instead of inventing a number.  AGDM's 'detach'
    variant is not attacked: the report's adaptive-attack check fails and names it."""
    out = tmp_path / "agdm"
    _run_here(out, 'methods=[{name="none"}, {name="agdm", t_star=5}]', 'model.aux="digits"',
              'attacks=[{name="pgd-full", steps=1, eot=1}, {name="aux-ce", kind="aux", steps=2, eot=1}]', "data.n=2",
              "batch_size=2")
    rows = _outcomes(out)
    assert rows[("none", 0)]["ensemble_run"] == ["pgd-full"] and "aux-ce" not in rows[("none", 0)]["attacks"]
    assert rows[("agdm@5", 0)]["ensemble_run"] == ["pgd-full", "aux-ce"]
    rep = write_report(out)
    assert set(rep["results"][0]["attacks"]) == {"pgd-full"} and set(rep["results"][1]["attacks"]) == {"pgd-full",
                                                                                                    "aux-ce"}
    assert "| none | 2 |" in (out / "report" / "report.md").read_text() and "n/a" in (out / "report" /
                                                                                     "report.md").read_text()
    (check,) = [c for c in rep["results"][1]["checks"] if c["name"] == "adaptive_attacks_for_components"]
    assert check["passed"] is False and check["value"] == 1 and "'detach'" in check["detail"]
    assert not [c for c in rep["results"][0]["checks"] if c["name"] == "adaptive_attacks_for_components"]


def test_default_ensemble_runs_each_methods_own_attack_list(tmp_path):
    out = tmp_path / "default"
    _run_here(out, "attacks=[]", "default_ensemble.use=true", "default_ensemble.steps=1", "default_ensemble.eot=1",
              "data.n=2", "batch_size=2")
    rows = _outcomes(out)
    assert rows[("none", 0)]["ensemble_run"] == ["pgd-ce-det", "apgd-ce-det", "apgd-dlr-det", "pgd-margin-det"]
    assert rows[("ddim@20", 1)]["ensemble_run"] == ["pgd-ce", "apgd-ce", "apgd-dlr", "pgd-margin", "bpda", "blind",
                                                    "forward-only"]
    rep = write_report(out)
    assert set(rep["results"][0]["attacks"]) == {"pgd-ce-det", "apgd-ce-det", "apgd-dlr-det", "pgd-margin-det"}
    assert rep["ensemble"]["name"] == "default 1x1"
    checks = {c["name"] for c in rep["results"][1]["checks"]}
    assert {"zero_gradient_elements", "bpda_not_stronger_than_exact", "large_eps_near_zero"} <= checks
