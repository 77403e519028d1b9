"""benchmarks/gpu_check.py cannot waste a GPU hour on a typo or a hang.  Default lane (seconds): the plan fits five
minutes in order of value; the summaries (ratios, MFU, Lee & Kim) on known rows; verification from test outcomes; a
step past its limit is killed with its whole process group and keeps its rows; SIGTERM still leaves the report and the
archive; a dry run of the quick steps with a simulated timeout leaves at most 8 files, one of them the archive; the
purification matrix in-process with graphed rows captured by the capture double; the verification record's
FASTPURIFY_GPU_VERIFIED path.  Slow lane: the whole --dry-run, and the whole --dry-run with every step timing out."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


gc_mod = _load("gpu_check")


def _rows(path):
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def _dead(pid):
    return not gc_mod._alive(pid)


# ---------------------------------------------------------------------------------------------- plan and summaries
def test_the_plan_is_in_order_of_value_and_fits_five_minutes():
    names = [s.name for s in gc_mod.PLAN]
    assert names == ["build", "optests", "roofline", "ops", "ncsnpp", "adm", "graphtests", "compiled"]
    assert sum(s.budget_s for s in gc_mod.PLAN) < 300  # `timeout 330` around it leaves the report and the archive
    text = gc_mod.plan_text({s.name: s.budget_s for s in gc_mod.PLAN}, {"adm"})
    assert all(n in text for n in names) and "[skipped]" in text and "total" in text


def test_summary_ratios_mfu_and_lee_kim_projection():
    base = dict(kind="row", plan="ncsnpp", model="ncsnpp", batch=64, first_call_s=1.0, cudnn_tf32=True)
    rows = [dict(base, mode="full", config="eager-fp32@torch", options={}, s_per_call=10.0, s_per_step=1.0,
                 images_per_s=6.4, flops_per_step=2e14, op_backend_used="torch"),
            dict(base, mode="full", config="graphed-bf16@cuda", options={"graphs": True, "precision": "bf16"},
                 s_per_call=2.5, s_per_step=0.25, images_per_s=25.6, grad_rel_err=0.01, op_backend_used="cuda"),
            dict(kind="error", plan="ncsnpp", model="ncsnpp", batch=256, mode="full", config="graphed-bf16@cuda",
                 error="OOM")]
    s = gc_mod.summarize_purify(rows, "NVIDIA H200", {"fp32": 5e13, "tf32": 4e14, "bf16": 8e14})
    fast = next(r for r in s["rows"] if r["config"] == "graphed-bf16@cuda")
    assert fast["ratio_vs_ref"] == pytest.approx(4.0) and fast["op_backend_used"] == "cuda"
    assert fast["mfu_vs_spec"] == pytest.approx(2e14 / 0.25 / 989e12)
    assert fast["mfu_vs_matmul"] == pytest.approx(2e14 / 0.25 / 8e14)
    lk = s["lee_kim_projection"]
    # 512 × 200 × 20 exact gradients, each 100 steps at 0.25 s per step of a 64-image batch.
    assert lk["gpu_hours"] == pytest.approx(512 * 200 * 20 * 0.25 * 100 / 64 / 3600)
    assert "graphed-bf16@cuda" in lk["from_row"] and s["errors_and_skips"][0]["error"] == "OOM"


def test_verification_rests_on_the_op_tests_of_each_backend():
    def t(nodeid, outcome):
        return {"nodeid": f"tests/test_gpu_ops.py::{nodeid}", "outcome": outcome}

    ok = [t("test_gpu_backends_are_available", "passed"), t("test_step_forward[shape0-0-mid-ddim-cuda]", "passed"),
          t("test_step_forward[shape0-0-mid-ddim-triton]", "passed"), t("test_x[cuda]", "skipped")]
    assert gc_mod.test_backends("a.py::f[REALISTIC-0-mid-ddpm-fixedsmall-triton]") == {"triton"}
    assert gc_mod.verified_backends(ok, ("cuda", "triton"), True) == (["cuda", "triton"], {})
    verified, why = gc_mod.verified_backends(ok + [t("test_y[triton]", "failed")], ("cuda", "triton"), True)
    assert verified == ["cuda"] and "1 of its tests failed" in why["triton"]
    verified, why = gc_mod.verified_backends(ok + [t("test_general", "error")], ("cuda", "triton"), True)
    assert verified == [] and "backend-independent" in why["cuda"]
    assert gc_mod.verified_backends(ok, ("cuda", "triton"), False)[0] == []  # a timed-out run verifies nothing
    assert "no test of it passed" in gc_mod.verified_backends(ok[:1], ("cuda",), True)[1]["cuda"]


# ---------------------------------------------------------------------------------------------- killing a step
_HANGING_STEP = """
import subprocess, sys, time, json
sys.path.insert(0, {bench!r})
import _meta
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
_meta.append_jsonl({rows!r}, {{"kind": "partial", "child_pid": child.pid}})
print("partial result written", flush=True)
time.sleep(600)
"""


def test_a_step_past_its_limit_is_killed_with_its_process_group_and_keeps_its_rows(tmp_path):
    rows, log = tmp_path / "rows.jsonl", tmp_path / "gpu_check.log"
    runner = gc_mod.Runner(tmp_path, rows, log)
    code = _HANGING_STEP.format(bench=str(ROOT / "benchmarks"), rows=str(rows))
    t0 = time.perf_counter()
    r = runner.run("ops", [sys.executable, "-c", code], 4.0, dict(os.environ))
    assert r["timed_out"] and r["rc"] is None and time.perf_counter() - t0 < 15
    (row,) = _rows(rows)
    assert row["kind"] == "partial" and _dead(row["child_pid"])  # the grandchild went with the group
    assert "partial result written" in r["tail"] and "TIMED OUT" in log.read_text()


def test_a_simulated_timeout_is_killed_as_soon_as_the_step_hangs(tmp_path):
    rows, log = tmp_path / "rows.jsonl", tmp_path / "gpu_check.log"
    code = ("import sys; sys.path.insert(0, %r); import _meta; _meta.append_jsonl(%r, {'kind': 'copy'}); "
            "_meta.hang('roofline', %r)" % (str(ROOT / "benchmarks"), str(rows), str(rows)))
    r = gc_mod.Runner(tmp_path, rows, log).run("roofline", [sys.executable, "-c", code], 60.0, dict(os.environ),
                                               simulate=True)
    assert r["timed_out"] and r["seconds"] < 30 and r["simulated_timeout"]
    assert r["hang"]["step"] == "roofline" and not r["hang_child_alive_after_kill"]
    assert [x["kind"] for x in _rows(rows)] == ["copy", "hang"]


def test_sigterm_kills_the_running_step_and_still_writes_report_and_archive(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out), "--skip",
           "build,optests,ops,ncsnpp,adm,graphtests,compiled", "--budget", "roofline=120"]
    env = {**os.environ, "FASTPURIFY_HANG_AFTER": "1"}  # the roofline step hangs after its first row
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows = out / "rows.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (rows.exists() and '"hang"' in rows.read_text()):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)  # what `timeout 330` sends
    stdout, _ = p.communicate(timeout=60)
    assert p.returncode == 124, stdout[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert "interrupted" in report["errors"] and not report["ok"]
    hang = next(r for r in _rows(rows) if r["kind"] == "hang")
    assert _dead(hang["pid"]) and _dead(hang["child_pid"])
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        assert {"gpu_check/gpu_check.json", "gpu_check/rows.jsonl", "gpu_check/gpu_check.log"} <= set(tar.getnames())


# ---------------------------------------------------------------------------------------------- dry runs
def test_dry_run_of_quick_steps_leaves_one_folder_of_at_most_8_files(tmp_path):
    """roofline and ops on the CPU, ops timing out after its first row: the report, the log, the rows (the partial
    ones included), versions, and one archive holding the rest."""
    out = tmp_path / "out"
    rc = gc_mod.main(["--dry-run", "--out", str(out), "--skip", "build,optests,ncsnpp,adm,graphtests,compiled",
                      "--simulate-timeout", "ops"])
    report = json.loads((out / "gpu_check.json").read_text())
    assert rc == 1 and not report["ok"]  # a timed-out step is not ok
    files = sorted(f.name for f in out.iterdir())
    assert len(files) <= 8 and "gpu_check.tar.gz" in files, files
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        assert {f"gpu_check/{f}" for f in files if f != "gpu_check.tar.gz"} == set(tar.getnames())
    v = report["versions"]
    assert v["python"] and v["torch"] and v["fastpurify"] and "nvcc" in v and "gcc" in v and "triton" in v
    assert report["steps"]["roofline"]["rc"] == 0 and report["copy_gb_per_s"] > 0
    ops = report["steps"]["ops"]
    assert ops["timed_out"] and ops["simulated_timeout"] and not ops["hang_child_alive_after_kill"]
    kinds = [r["kind"] for r in _rows(out / "rows.jsonl")]
    assert kinds[0] == "versions" and "copy" in kinds and kinds[-1] == "hang"  # the partial result survived
    assert report["steps"]["optests"] == {"skip_reason": "--skip"}


def test_purify_matrix_rows_record_backends_and_capture_through_the_double(tmp_path, monkeypatch):
    """gpu_purify.py in-process on the CPU: every row names the op backend it asked for and ran with; graphed rows
    were captured and replayed by the capture double and agree with eager (fp32 to rounding, bf16 within tolerance);
    FLOPs counted; purify and full."""
    from fastpurify.models import fast

    gp = _load("gpu_purify")
    monkeypatch.setattr(fast, "COMPILE_BACKEND", fast.COMPILE_BACKEND)  # the dry run sets aot_eager: restore after
    monkeypatch.setattr(gp, "DRY_PLANS", {"ncsnpp": [(64, "purify", [gp.REF, "graphed-bf16@cuda"]),
                                                     (64, "full", [gp.REF, "graphed-fp32@cuda"])]})
    out = tmp_path / "rows.jsonl"
    assert gp.main(["--plan", "ncsnpp", "--out", str(out), "--dry-run", "--reps", "1", "--budget", "300"]) == 0
    lines = _rows(out)
    assert not [x for x in lines if x["kind"] in ("error", "skip")], lines
    rows = {(r["mode"], r["config"]): r for r in lines if r["kind"] == "row"}
    assert set(rows) == {("purify", gp.REF), ("purify", "graphed-bf16@cuda"), ("full", gp.REF),
                         ("full", "graphed-fp32@cuda")}
    ref, g = rows[("purify", gp.REF)], rows[("purify", "graphed-bf16@cuda")]
    assert ref["op_backend"] == ref["op_backend_used"] == "torch"
    assert g["op_backend"] == "cuda" and g["op_backend_used"] == "cpu"  # the dry run's stand-in, recorded
    assert g["graphs"]["capture"] == "simulated (capture double)" and g["graphs"]["replays"] >= 1
    assert 0 < g["value_max_abs_diff"] < 5e-2
    assert rows[("full", "graphed-fp32@cuda")]["grad_rel_err"] < 1e-5
    assert rows[("full", gp.REF)]["flops_per_step"] > 2 * ref["flops_per_step"] > 0


def test_the_verification_record_goes_where_fastpurify_gpu_verified_says(tmp_path, monkeypatch):
    from fastpurify.ops import registry

    before = registry.VERIFIED_PATH.read_text()
    target = tmp_path / "verified.json"
    monkeypatch.setenv("FASTPURIFY_GPU_VERIFIED", str(target))
    assert registry.verified_path() == target
    rec = gc_mod._record(["cpu"], False, registry.verified_path(), package=False)
    assert registry.VERIFIED_PATH.read_text() == before  # the package's file is untouched
    assert registry.load_verified(target) == [rec] and rec in registry.load_verified()  # read beside the package's
    order, _ = registry.verified_priority(rec["gpu"], (0, 0), registry.load_verified(), rec["fastpurify"],
                                         rec["torch"])
    assert order == ("cuda", "triton", "torch")
    with pytest.raises(SystemExit, match="dry-run record"):
        gc_mod.merge_record(target, into=tmp_path / "package.json")


@pytest.mark.slow
def test_dry_run_goes_through_every_step(tmp_path):
    rc = gc_mod.main(["--dry-run", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and report["ok"], json.dumps(report["steps"], indent=1)[-3000:]
    assert set(report["steps"]) == set(gc_mod.STEPS)
    assert report["optests"]["counts"].get("passed", 0) >= 1 and not report["optests"]["failures"]
    assert report["verification"]["record"]["gpu"] == "dry run (no GPU)"
    assert report["ops"]["step_noise_free_best"] and report["copy_gb_per_s"] > 0
    rows = report["purify"]["rows"]
    lines = _rows(tmp_path / "rows.jsonl")
    assert not [x for x in lines if x["kind"] == "error"], [x["error"] for x in lines if x["kind"] == "error"]
    assert {r["config"] for r in rows} >= {"eager-fp32@torch", "graphed-fp32@cuda", "compiled-graphed-bf16@cuda"}
    assert {(r["model"], r["mode"]) for r in rows} == {(m, k) for m in ("ncsnpp", "adm") for k in ("purify", "full")}
    assert {r["capture"] for r in rows if "graphed" in r["config"]} == {"simulated (capture double)"}
    assert report["graphtests"]["counts"].get("passed", 0) >= 1 and not report["graphtests"]["failures"]
    assert len(list(tmp_path.iterdir())) <= 8


@pytest.mark.slow
def test_dry_run_with_every_step_timing_out_keeps_partial_results(tmp_path):
    rc = gc_mod.main(["--dry-run", "--out", str(tmp_path), "--simulate-timeout", "all"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 1 and not report["ok"]
    lines = _rows(tmp_path / "rows.jsonl")
    hangs = {r["step"]: r for r in lines if r["kind"] == "hang"}
    for name in gc_mod.STEPS:
        step = report["steps"][name]
        assert step["timed_out"] and step["simulated_timeout"], (name, step)
        assert name in hangs and not step["hang_child_alive_after_kill"], name
    kinds = {r["kind"] for r in lines}
    assert {"build", "test", "roofline", "copy", "row"} <= kinds  # each step's first result survived its kill
    assert len(list(tmp_path.iterdir())) <= 8 and (tmp_path / "gpu_check.tar.gz").exists()


def test_the_noise_bound_from_sms_and_clock(monkeypatch):
    """The noisy step's arithmetic bound: SMs · 128 lanes · clock / instructions per element (H200-like numbers)."""
    import types

    import torch

    bo = _load("bench_ops")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: types.SimpleNamespace(multi_processor_count=132, clock_rate=1_980_000))
    b = bo.noise_issue_bound(0)
    assert b["elements_per_s_1100"] == pytest.approx(132 * 128 * 1.98e9 / 275)  # ≈ 1.2e11 normals/s
    assert b["elements_per_s"] == pytest.approx(132 * 128 * 1.98e9 / 150)
    assert bo.noise_issue_bound(0, clock_mhz=1000)["clock_mhz"] == pytest.approx(1000)
