"""Summaries of the rows (ops, purification), the archive and the printed summary."""

from __future__ import annotations

import tarfile
from pathlib import Path

from .plan import LEE_KIM, PEAKS, REF


# ---------------------------------------------------------------------------------------------- summaries
def summarize_tests(tests: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    failures = [{"nodeid": t["nodeid"], "message": (t.get("message") or "")[-600:]} for t in tests
                if t["outcome"] in ("failed", "error")]
    slow = sorted(tests, key=lambda t: -t.get("seconds", 0))[:5]
    return {"counts": counts, "failures": failures[:20], "slowest": [(t["nodeid"], t["seconds"]) for t in slow]}


def summarize_ops(rows: list[dict]) -> dict:
    ops = [r for r in rows if r.get("kind") == "op"]
    table = [{k: r.get(k) for k in ("case", "provider", "dtype", "tensor_mib", "median_s", "gb_per_s", "pct_of_copy",
                                    "elements_per_s", "roofline", "pct_of_roofline", "meets_target")} for r in ops]
    step0 = [r for r in ops if r["case"] == "sampler_step_nonoise" and r["provider"] != "torch"]
    noisy = [r for r in ops if r["case"] == "sampler_step" and r["provider"] != "torch"]
    def best(rs, k):
        return max(rs, key=lambda r: r[k]) if rs else None

    b0, bn = best(step0, "pct_of_copy"), best(noisy, "pct_of_roofline")
    return {"rows": table, "copy": [r for r in rows if r.get("kind") == "copy"],
            "noise_bound": next((r for r in rows if r.get("kind") == "noise_bound"), None),
            "step_noise_free_best": b0 and {k: b0[k] for k in ("provider", "dtype", "gb_per_s", "pct_of_copy",
                                                                  "meets_target")},
            "step_noisy_best": bn and {k: bn[k] for k in ("provider", "dtype", "gb_per_s", "elements_per_s",
                                                            "pct_of_roofline", "roofline")},
            "skipped": [r for r in rows if r.get("kind") == "skip" and "case" in r][:20],
            "errors": [r for r in rows if r.get("kind") == "error" and "case" in r][:20]}


def summarize_purify(rows: list[dict], gpu: str | None, matmul: dict) -> dict:
    """Ratios to the reference row (eager fp32 on the torch backend, same plan, batch and mode), MFU per row, the
    Lee & Kim projection."""
    refs = {(r["plan"], r["batch"], r["mode"]): r for r in rows if r.get("kind") == "row" and r["config"] == REF}
    peaks = next((v for k, v in PEAKS.items() if gpu and k in gpu), None)
    table = []
    for r in rows:
        if r.get("kind") != "row":
            continue
        ref = refs.get((r["plan"], r["batch"], r["mode"]))
        flops = ref and ref.get("flops_per_step")
        low = r["options"].get("precision") == "bf16"
        achieved = flops / r["s_per_step"] if flops else None
        spec = peaks and (peaks["bf16"] if low else peaks["tf32" if r.get("cudnn_tf32") else "fp32"])
        mm = matmul.get("bf16" if low else ("tf32" if r.get("cudnn_tf32") else "fp32"))
        table.append(dict(model=r["model"], plan=r["plan"], batch=r["batch"], mode=r["mode"], config=r["config"],
                          op_backend_used=r.get("op_backend_used"), s_per_step=r["s_per_step"],
                          images_per_s=r["images_per_s"], ratio_vs_ref=ref and ref["s_per_call"] / r["s_per_call"],
                          first_call_s=r["first_call_s"], value_max_abs_diff=r.get("value_max_abs_diff"),
                          grad_rel_err=r.get("grad_rel_err"), peak_mem_gib=r.get("peak_mem_gib"),
                          capture=(r.get("graphs") or {}).get("capture"),
                          tflop_per_s=achieved and achieved / 1e12, mfu_vs_spec=achieved and spec and achieved / spec,
                          mfu_vs_matmul=achieved and mm and achieved / mm))
    # Lee & Kim: every PGD step of every EOT draw is one exact full gradient through a 100-step purification.
    grads = [t for t in table if t["model"] == "ncsnpp" and t["mode"] == "full" and
             (t["grad_rel_err"] is None or t["grad_rel_err"] <= 5e-2)]
    best = max(grads, key=lambda t: t["batch"] / t["s_per_step"], default=None)
    projection = None
    if best:
        s_per_image = best["s_per_step"] * LEE_KIM["nfe"] / best["batch"]
        n = LEE_KIM["images"] * LEE_KIM["pgd_steps"] * LEE_KIM["eot"]
        projection = dict(**LEE_KIM, gradient_evaluations=n, from_row=f"{best['config']} batch {best['batch']}",
                          s_per_image_gradient=s_per_image, gpu_hours=n * s_per_image / 3600, gpu=gpu,
                          note="measured per-step time × 100 steps; excludes the final re-evaluation (N forward "
                               "purifications per image, < 1 % of the attack's cost)")
    other = [r for r in rows if r.get("kind") in ("error", "skip") and "config" in r]
    return {"rows": table, "lee_kim_projection": projection, "errors_and_skips": other[:30],
            "cut_while": [r for r in rows if r.get("kind") == "start"][-1:]}


def archive(out: Path) -> Path:
    """gpu_check.tar.gz: every other file of the folder."""
    path = out / "gpu_check.tar.gz"
    tmp = out / ".gpu_check.tar.gz.part"
    with tarfile.open(tmp, "w:gz") as tar:
        for f in sorted(out.iterdir()):
            if f.is_file() and f.name not in (path.name, tmp.name):
                tar.add(f, arcname=f"gpu_check/{f.name}")
    tmp.replace(path)
    return path


def _print_summary(report: dict, out: Path) -> None:
    v = report.get("verification") or {}
    print(f"  verified: {v.get('verified')}  not: {v.get('not_verified')}", flush=True)
    for name in ("optests", "graphtests"):
        if report.get(name):
            print(f"  {name}: {report[name]['counts']}")
    print(f"  copy {report.get('copy_gb_per_s')} GB/s; matmul {report.get('matmul_flop_per_s')}")
    ops = report.get("ops") or {}
    print(f"  σ = 0 step best: {ops.get('step_noise_free_best')}; noisy step best: {ops.get('step_noisy_best')}")
    for name, err in (report.get("errors") or {}).items():
        print(f"  ERROR in {name}: {err[:300]}")
    if report.get("dry_run"):
        print("  (dry run: the times below are of tiny models on this CPU — a script check, not a GPU number)")
    for r in (report.get("purify") or {}).get("rows", []):
        ratio = r["ratio_vs_ref"]
        print(f"  {r['model']:6s} b{r['batch']:<4d} {r['mode']:6s} {r['config']:28s} {r['images_per_s']:10.2f} img/s "
              f"x{ratio or 0:6.2f} vs {REF}  MFU {100 * (r['mfu_vs_spec'] or 0):5.1f} % (spec)")
    lk = (report.get("purify") or {}).get("lee_kim_projection")
    if lk:
        print(f"  Lee & Kim (512 × PGD-200 × EOT-20, exact): {lk['gpu_hours']:.1f} GPU-hours ({lk['from_row']})")
    print(f"gpu_check: {'ok' if report.get('ok') else 'NOT OK'} in {report.get('total_seconds')} s; "
          f"{out / 'gpu_check.json'}, archive {out / 'gpu_check.tar.gz'}", flush=True)
