"""benchmarks/gpu_check.py cannot be broken by a typo: its CPU dry run goes through every step at tiny sizes, and the
report's summaries (ratios, MFU, the Lee & Kim projection) are checked on known rows."""

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


@pytest.mark.slow
def test_dry_run_goes_through_every_step(tmp_path):
    gc = _load("gpu_check")
    rc = gc.main(["--dry-run", "--out", str(tmp_path), "--total", "400"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert rc == 0 and report["ok"], json.dumps(report["steps"], indent=1)[-3000:]
    assert set(report["steps"]) == {"build", "tests", "ops", "ncsnpp", "adm"}
    assert report["steps"]["tests"]["tests"] >= 1 and report["steps"]["tests"]["failures"] == 0
    assert report["benchmarks"] and report["copy_gb_per_s"] > 0
    rows = report["purify"]["rows"]
    lines = [json.loads(x) for x in (tmp_path / "purify_rows.jsonl").read_text().splitlines()]
    assert not [x for x in lines if x["kind"] == "error"], [x["error"] for x in lines if x["kind"] == "error"]
    assert {r["variant"] for r in rows} >= {"eager-fp32", "graphed-bf16", "compiled-graphed-bf16"}
    assert {(r["model"], r["mode"]) for r in rows} == {(m, k) for m in ("ncsnpp", "adm") for k in ("purify", "full")}
    assert all(r["ratio_vs_eager_fp32"] > 0 and r["tflop_per_s"] > 0 for r in rows)
    assert report["purify"]["lee_kim_projection"]["gpu_hours"] > 0
