"""report.json and report.md of an audit, written together or not at all: into a fresh folder beside --out, which
is then renamed to --out (an existing non-empty --out is refused, never overwritten in part)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ..tables import markdown_table
from .blackbox import AuditError
from .eps_curve import markdown_lines as eps_curve_lines


def _status(c: dict) -> str:
    return "not run" if c["passed"] is None else ("ok" if c["passed"] else "FAILED")


def markdown(report: dict) -> str:
    """The verdict first (a robust accuracy never stands without it), then the table, the checks, the probe."""
    tm = report["threat_model"]
    lines = [f"# audit: {report['defence']}", "", f"**verdict: {report['verdict']}**", "",
             (f"SPEC `{report['spec']}` · data: {report['dataset']}, n = {report['n_examples']} · {tm['norm']} ε = "
              f"{tm['eps']:g} · {report['steps']} steps × EOT {report['eot']} · {report['seconds']:.0f} s on "
              f"{report['torch_threads']} CPU threads"), "",
             markdown_table([report["protocol"]]), "", "## checks", "",
             "| check | status | value | threshold | category | why / detail |", "|---|---|---|---|---|---|"]
    for c in report["checks"]:
        why = (c.get("reason") or c["detail"]).replace("|", "/")
        lines.append(f"| {c['name']} | {_status(c)} | {c['value']} | {c['threshold']} | {c['category']} | {why} |")
    gc = report["gradient_consistency"]
    if "mean_pairwise_cos" in gc:
        lines += ["", "## gradient consistency across draws", "",
                  (f"mean pairwise cosine of single-draw gradients {gc['mean_pairwise_cos']} (lower 95 % "
                   f"{gc['cos_ci95_low']}); EOT needed for cosine ≥ {gc['target_cos']}: {gc['eot_needed']} "
                   f"(used {gc['eot_used']}, budget {gc['max_eot']})"), "",
                  "| m draws | cosine of two disjoint means (measured) |", "|---|---|"]
        lines += [f"| {m} | {v} |" for m, v in gc["curve_measured"].items()]
    if "eps_curve" in report:
        lines += eps_curve_lines(report["eps_curve"])
    p = report["probe"]["purifier"]
    lines += ["", "## probe", "", (f"randomised: {p['randomized']} · batch-independent: {p['batch_independent']} · "
                                   f"output range on the probe {p['output_range']} · input left unmodified")]
    if report["caveats"]:
        lines += ["", "caveats: " + "; ".join(report["caveats"])]
    return "\n".join(lines) + "\n"


def write(report: dict, out: Path, extra: dict | None = None) -> None:
    """report.json, report.md (and extra {file name: writer(path)}) into `out`, all or nothing."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise AuditError(f"--out {out} exists and is not an empty folder: choose a new one (an audit never "
                         "overwrites part of an earlier one)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        report = {k: v for k, v in report.items() if not k.startswith("_")}
        (tmp / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (tmp / "report.md").write_text(markdown(report))
        for name, writer in (extra or {}).items():
            writer(tmp / name)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
