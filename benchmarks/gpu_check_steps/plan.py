"""The plan: steps, budgets, output files, constants, and the deadlines."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]


class Step(NamedTuple):
    name: str
    budget_s: float  # on a GPU
    dry_s: float  # in a --dry-run on the CPU
    what: str


PLAN = (
    Step("build", 60, 60, "fastpurify._C (C++ + CUDA: sm_80, sm_90, compute_90 PTX) against this torch"),
    Step("optests", 70, 60, "verification: tests/test_gpu_ops.py -v, one Triton config, a limit per test"),
    Step("roofline", 10, 30, "device-to-device copy (1 GiB) and matmul fp32 / tf32 / bf16"),
    Step("ops", 35, 40, "fused ops at 256 MiB per tensor, cuda / triton vs torch, σ = 0 apart; JSONL per case"),
    Step("ncsnpp", 50, 90, "NCSN++ 106.6 M: eager vs graphed, fp32 vs bf16, purify and full, ours vs reference"),
    Step("adm", 20, 60, "ADM-256 552.8 M: eager vs graphed bf16, batch 1 and 4"),
    Step("graphtests", 25, 60, "tests/test_graphed.py -m gpu: captured purification vs eager (reported apart)"),
    Step("compiled", 25, 90, "NCSN++ torch.compile (inductor) bf16, eager and graphed: last, own budget"),
)
STEPS = tuple(s.name for s in PLAN)
FILES = ("gpu_check.json", "gpu_check.log", "rows.jsonl", "gpu_verified.json", "gpu_check.tar.gz")
PARTS = ("gpu_check.json.part", ".gpu_check.tar.gz.part")  # written then renamed; left only by a kill mid-write
MAX_FILES = 8
TEST_TIMEOUT_S = 40  # per test (setup and call each), GPU lane
KILL_GRACE_S = 3.0
# Dense spec-sheet peaks (FLOP/s) for MFU; an unknown GPU gets only the measured-matmul ratio.
_HOPPER = {"bf16": 989e12, "tf32": 495e12, "fp32": 67e12}  # H100/H200 SXM (H200: same compute, more HBM)
PEAKS = {"H100": _HOPPER, "H200": _HOPPER, "A100": {"bf16": 312e12, "tf32": 156e12, "fp32": 19.5e12}}
LEE_KIM = dict(images=512, pgd_steps=200, eot=20, nfe=100)  # CIFAR-10 DiffPure, t* = 0.1: 100 steps per purification
REF = "eager-fp32@torch"


def plan_text(budgets: dict[str, float], skip: set[str]) -> str:
    lines, total = [], 0.0
    for s in PLAN:
        b = 0.0 if s.name in skip else budgets[s.name]
        total += b
        lines.append(f"  {s.name:10s} {b:5.0f} s  (by {total:5.0f} s)  {s.what}" + ("  [skipped]" if s.name in skip
                                                                                  else ""))
    return "\n".join(lines) + f"\n  {'total':10s} {total:5.0f} s"


def _left(budgets, name: str, elapsed_plan: float, t_start: float) -> float:
    """The limit `name` will get when it starts now (run_step computes the same)."""
    return elapsed_plan + budgets[name] - (time.perf_counter() - t_start)


def _pythonpath() -> str:
    return os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")] +
                           ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
