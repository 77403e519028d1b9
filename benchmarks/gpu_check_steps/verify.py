"""Verification from test outcomes, and the verification record."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

import _meta  # benchmarks/ is on sys.path (gpu_check.py puts it there)

from .plan import ROOT

# ---------------------------------------------------------------------------------------------- verification
_BACKEND_NAMES = ("cuda", "triton", "cpu", "torch")


def test_backends(nodeid: str) -> set[str]:
    """The backends a test's parameters name ('…[REALISTIC-0-mid-ddim-cuda]' → {'cuda'})."""
    params = nodeid.partition("[")[2].rstrip("]")
    return {t for t in re.split(r"[-,\s]", params) if t in _BACKEND_NAMES}


def verified_backends(tests: list[dict], candidates, completed: bool) -> tuple[list[str], dict]:
    """Which candidates the op tests verify, and why each other one is not: the step completed (no timeout, pytest
    exit 0/1), every backend-independent test passed, and every test naming the backend passed (at least one)."""
    why: dict[str, str] = {}
    if not completed:
        return [], {b: "the op tests did not complete (timeout or crash)" for b in candidates}
    bad = [t["nodeid"] for t in tests if t["outcome"] in ("failed", "error") and not test_backends(t["nodeid"])]
    ok = []
    for b in candidates:
        mine = [t for t in tests if b in test_backends(t["nodeid"])]
        failed = [t["nodeid"] for t in mine if t["outcome"] in ("failed", "error")]
        if bad:
            why[b] = f"backend-independent tests failed: {bad[:3]}"
        elif failed:
            why[b] = f"{len(failed)} of its tests failed: {failed[:3]}"
        elif not any(t["outcome"] == "passed" for t in mine):
            why[b] = "no test of it passed (not available, or all skipped)"
        else:
            ok.append(b)
    return ok, why


def _basetemp() -> str:
    """A pytest --basetemp of the step's own (outside the output folder), so a test step never shares or rotates the
    temporary folders of another pytest run on the machine (this one's caller, say)."""
    _TEMPS.append(tempfile.mkdtemp(prefix="gpu-check-pytest-"))
    return f"--basetemp={_TEMPS[-1]}"


_TEMPS: list[str] = []  # removed when the check ends


def _record(backends: list[str], gpu: bool, path: Path, package: bool) -> dict:
    """mark_gpu_verified for the verified backends (a dry run records its stand-in under a made-up GPU name)."""
    sys.path.insert(0, str(ROOT))
    from fastpurify.ops.registry import VERIFIED_PATH, mark_gpu_verified

    commit = _meta.commit()
    if not gpu:
        return mark_gpu_verified(("cuda", "triton"), commit=commit, path=path, gpu="dry run (no GPU)",
                                 capability=(0, 0))
    rec = mark_gpu_verified(backends, commit=commit, path=path)
    if package and Path(path) != VERIFIED_PATH:
        mark_gpu_verified(backends, commit=commit, path=VERIFIED_PATH)
    return rec


def merge_record(path: Path, into: Path | None = None) -> list[dict]:
    """Add the records of `path` to the package's file (same GPU, capability and versions: replaced)."""
    sys.path.insert(0, str(ROOT))
    from fastpurify.ops.registry import VERIFIED_PATH, load_verified

    into = into or VERIFIED_PATH
    key = ("gpu", "capability", "fastpurify", "torch")
    new = load_verified(path)
    if any(r.get("gpu") == "dry run (no GPU)" for r in new):
        raise SystemExit(f"{path} holds a dry-run record (no GPU): not merged")
    keep = [r for r in load_verified(into) if tuple(r.get(k) for k in key) not in
            {tuple(n.get(k) for k in key) for n in new}]
    Path(into).write_text(json.dumps({"records": keep + new}, indent=2) + "\n")
    return keep + new
