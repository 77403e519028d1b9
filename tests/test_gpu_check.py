"""benchmarks/gpu_check.py cannot be broken by a typo: the quick tests run its in-process sections, its error
recording, the gpu_verified call and the purification matrix (tiny NCSN++, CPU) in seconds; the slow test runs the
whole --dry-run (every subprocess step at tiny sizes).  The report's summaries (ratios, MFU, the Lee & Kim
projection) are checked on known rows."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_summary_ratios_mfu_and_lee_kim_projection():
    gc = _load("gpu_check")
    base = dict(kind="row", model="ncsnpp", batch=64, first_call_s=1.0, cudnn_tf32=True)
    rows = [dict(base, mode="full", variant="eager-fp32", options={}, s_per_call=10.0, s_per_step=1.0,
                 images_per_s=6.4, flops_per_step=2e14),
            dict(base, mode="full", variant="graphed-bf16", options={"graphs": True, "precision": "bf16"},
                 s_per_call=2.5, s_per_step=0.25, images_per_s=25.6, grad_rel_err=0.01),
            dict(kind="error", model="ncsnpp", batch=256, mode="full", variant="graphed-bf16", error="OOM")]
    s = gc.summarize_purify(rows, "NVIDIA H200", {"fp32": 5e13, "bf16": 8e14})
    fast = next(r for r in s["rows"] if r["variant"] == "graphed-bf16")
    assert fast["ratio_vs_eager_fp32"] == pytest.approx(4.0)
    assert fast["mfu_vs_spec"] == pytest.approx(2e14 / 0.25 / 989e12)
    assert fast["mfu_vs_matmul"] == pytest.approx(2e14 / 0.25 / 8e14)
    lk = s["lee_kim_projection"]
    # 512 × 200 × 20 exact gradients, each 100 steps at 0.25 s per step of a 64-image batch.
    assert lk["gpu_hours"] == pytest.approx(512 * 200 * 20 * 0.25 * 100 / 64 / 3600)
    assert "graphed-bf16" in lk["from_row"]


def test_sections_record_errors_and_the_rest_goes_on(tmp_path, monkeypatch):
    """Every step skipped: the in-process sections run; one that raises is recorded, the report still written."""
    gc = _load("gpu_check")

    def broken(device, n):
        raise RuntimeError("matmul exploded")

    monkeypatch.setattr(gc, "_matmul_flops", broken)
    rc = gc.main(["--dry-run", "--out", str(tmp_path), "--skip", "tests,ops,ncsnpp,adm", "--total", "60"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 1 and not report["ok"]
    assert report["errors"] == {"matmul": "RuntimeError: matmul exploded"}
    assert report["copy_gb_per_s"] > 0 and report["matmul_flop_per_s"] == {}
    assert "backends" in report["fastpurify_info"]


def test_mark_verified_dry_run_writes_a_scratch_record(tmp_path):
    from fastpurify.ops.registry import VERIFIED_PATH, load_verified, verified_priority

    gc = _load("gpu_check")
    before = VERIFIED_PATH.read_text()
    record = gc.mark_verified(None, tmp_path)
    assert VERIFIED_PATH.read_text() == before  # the package's file is only written on a GPU
    assert load_verified(tmp_path / "gpu_verified.json") == [record]
    order, _ = verified_priority(record["gpu"], (0, 0), [record], record["fastpurify"], record["torch"])
    assert order == ("cuda", "triton", "torch")


def test_purify_matrix_rows_on_tiny_ncsnpp(tmp_path, monkeypatch):
    """gpu_purify.py in-process on the CPU: eager, static-buffer ('graphed' off a GPU), bf16 and compiled rows with
    accuracy against eager fp32, FLOPs counted, purify and full."""
    from fastpurify.models import fast

    gp = _load("gpu_purify")
    monkeypatch.setattr(fast, "COMPILE_BACKEND", fast.COMPILE_BACKEND)  # the dry run sets aot_eager: restore after
    monkeypatch.setattr(gp, "PLANS", {"ncsnpp": [(64, "purify", ["eager-fp32", "graphed-bf16"]),
                                                 (64, "full", ["eager-fp32", "compiled-graphed-bf16"])]})
    out = tmp_path / "rows.jsonl"
    assert gp.main(["--model", "ncsnpp", "--out", str(out), "--dry-run", "--reps", "1", "--budget", "120"]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert not [x for x in lines if x["kind"] in ("error", "skip")], lines
    rows = {(r["mode"], r["variant"]): r for r in lines if r["kind"] == "row"}
    assert set(rows) == {("purify", "eager-fp32"), ("purify", "graphed-bf16"), ("full", "eager-fp32"),
                         ("full", "compiled-graphed-bf16")}
    assert rows[("purify", "eager-fp32")]["flops_per_step"] > 0
    assert rows[("full", "eager-fp32")]["flops_per_step"] > 2 * rows[("purify", "eager-fp32")]["flops_per_step"]
    g = rows[("purify", "graphed-bf16")]["graphs"]
    assert g["setting"] == "static" and g["active"] and not g["capture"]
    assert 0 < rows[("purify", "graphed-bf16")]["value_max_abs_diff"] < 5e-2
    assert 0 < rows[("full", "compiled-graphed-bf16")]["grad_rel_err"] < 0.2


@pytest.mark.slow
def test_dry_run_goes_through_every_step(tmp_path):
    gc = _load("gpu_check")
    rc = gc.main(["--dry-run", "--out", str(tmp_path), "--total", "400"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and report["ok"], json.dumps(report["steps"], indent=1)[-3000:]
    assert set(report["steps"]) == {"build", "tests", "ops", "ncsnpp", "adm"}
    assert report["steps"]["tests"]["tests"] >= 1 and report["steps"]["tests"]["failures"] == 0
    assert report["gpu_verified"]["gpu"] == "dry run (no GPU)" and not report["gpu_tests_passed"]
    assert report["benchmarks"] and report["copy_gb_per_s"] > 0
    rows = report["purify"]["rows"]
    lines = [json.loads(x) for x in (tmp_path / "purify_rows.jsonl").read_text().splitlines()]
    assert not [x for x in lines if x["kind"] == "error"], [x["error"] for x in lines if x["kind"] == "error"]
    assert {r["variant"] for r in rows} >= {"eager-fp32", "graphed-bf16", "compiled-graphed-bf16"}
    assert {(r["model"], r["mode"]) for r in rows} == {(m, k) for m in ("ncsnpp", "adm") for k in ("purify", "full")}
    assert all(r["ratio_vs_eager_fp32"] > 0 and r["tflop_per_s"] > 0 for r in rows)
    assert report["purify"]["lee_kim_projection"]["gpu_hours"] > 0
