"""What every benchmark result records about where it ran (the commit, the machine's load), and the pieces the GPU
check's steps share: JSON lines that survive a kill, a simulated hang, and a pytest plugin.  Imported by the
benchmark scripts and pytest-benchmark modules of this folder (both put it on sys.path).

pytest plugin (`python -m pytest -p _meta ...` with this folder on PYTHONPATH; benchmarks/gpu_check.py's test steps):
  FASTPURIFY_TEST_TIMEOUT=s   each test's setup and call get s seconds each (SIGALRM in the main thread: the test
                              fails with TestTimeout and the run goes on).  A hang inside C code (a compiler) is only
                              interrupted when it returns to Python; the step's own limit kills the process group.
  FASTPURIFY_TEST_JSONL=path  one JSON line per test outcome, appended (flushed, fsynced) as soon as it is known, with
                              FASTPURIFY_TEST_STEP as its "step": a killed run keeps every outcome so far.
  FASTPURIFY_HANG_AFTER=n     (gpu_check --simulate-timeout) after n outcomes, hang as a stuck compile would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def commit() -> str | None:
    """Short hash of the checkout's HEAD (None outside a git checkout)."""
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                           check=False)
    except OSError:
        return None
    return p.stdout.strip() or None


def loadavg() -> float | None:
    """1-minute load average (None where the OS has none): timings taken under load are suspect."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def append_jsonl(path, row: dict) -> None:
    """One line, flushed and fsynced: a run killed at any point keeps every row written before."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------------------------------------- simulated timeouts
def hang_after() -> int | None:
    """FASTPURIFY_HANG_AFTER as an int (None when unset): a step hangs after this many results."""
    v = os.environ.get("FASTPURIFY_HANG_AFTER")
    return int(v) if v else None


def hang(step: str, jsonl=None) -> None:
    """Hang like a stuck compile: start a child process that sleeps (a compiler worker), record it, sleep forever.
    Only the process-group kill of gpu_check's step runner ends both."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    row = {"kind": "hang", "step": step, "pid": os.getpid(), "child_pid": child.pid}
    if jsonl:
        append_jsonl(jsonl, row)
    print(f"simulated hang: {json.dumps(row)}", flush=True)
    while True:
        time.sleep(3600)


# ---------------------------------------------------------------------------------------------- the pytest plugin
class TestTimeout(Exception):
    """A test ran past FASTPURIFY_TEST_TIMEOUT."""

    __test__ = False


def _limited(phase: str):
    limit = float(os.environ.get("FASTPURIFY_TEST_TIMEOUT") or 0)
    if limit <= 0 or threading.current_thread() is not threading.main_thread():
        return None

    def on_alarm(signum, frame):
        raise TestTimeout(f"{phase} ran past FASTPURIFY_TEST_TIMEOUT={limit:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    return old


def _unlimit(old) -> None:
    if old is not None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


try:
    import pytest
except ImportError:  # the plugin needs pytest; the rest of this module does not
    pytest = None

if pytest is not None:
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(item):
        old = _limited("setup")
        try:
            yield
        finally:
            _unlimit(old)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        old = _limited("test")
        try:
            yield
        finally:
            _unlimit(old)

    _OUTCOMES = [0]

    def pytest_runtest_logreport(report):
        path = os.environ.get("FASTPURIFY_TEST_JSONL")
        if not path or os.environ.get("PYTEST_XDIST_WORKER"):  # under xdist the controller writes the rows
            return
        # One row per test: its call outcome, or the setup/teardown outcome when that is what failed or skipped.
        if report.when == "call" or (report.when == "setup" and report.outcome != "passed") or \
                (report.when == "teardown" and report.outcome == "failed"):
            outcome = "skipped" if report.skipped else report.outcome
            if report.when != "call" and outcome == "failed":
                outcome = "error"
            row = {"kind": "test", "step": os.environ.get("FASTPURIFY_TEST_STEP"), "nodeid": report.nodeid,
                   "outcome": outcome, "when": report.when, "seconds": round(report.duration, 3)}
            if outcome in ("failed", "error"):
                row["message"] = str(report.longrepr)[-1500:]
            elif outcome == "skipped" and isinstance(report.longrepr, tuple):
                row["message"] = str(report.longrepr[2])[:300]
            append_jsonl(path, row)
            _OUTCOMES[0] += 1
            n = hang_after()
            if n is not None and _OUTCOMES[0] >= n:
                hang(os.environ.get("FASTPURIFY_TEST_STEP") or "tests", path)


def time_call(fn, device: str) -> float:
    """Seconds for one call of fn: CUDA events around it on a GPU (no host clock, no synchronize per call inside
    the measured span), the wall clock on the CPU."""
    if device == "cuda":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

