"""Running a step in its own process group under a deadline; the rows it leaves."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from .plan import KILL_GRACE_S, ROOT


class Terminated(Exception):
    """SIGTERM (e.g. from `timeout`): stop the running step, then write the report and the archive."""


# ---------------------------------------------------------------------------------------------- running a step
def kill_group(p: subprocess.Popen, grace: float = KILL_GRACE_S) -> None:
    """SIGTERM to the step's whole process group, SIGKILL to whatever is left of it after `grace` seconds (children
    included), and wait until none of its processes runs any more."""
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    p.wait()
    deadline = time.monotonic() + 5.0
    while _group_members(p.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    """Processes of process group `pgid` that still run (zombies excluded); Linux /proc."""
    out = []
    for d in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) counts as dead.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return True


class Runner:
    """Runs steps as process groups, streams their output to the log, kills them at their deadline."""

    def __init__(self, out: Path, rows: Path, log: Path):
        self.out, self.rows, self.log = out, rows, log
        self.current: subprocess.Popen | None = None

    def run(self, name: str, cmd: list[str], limit: float, env: dict, simulate: bool = False) -> dict:
        cmd = [str(c) for c in cmd]
        t0 = time.perf_counter()
        with open(self.log, "a") as log:
            log.write(f"\n===== step {name} (limit {limit:.0f} s): {' '.join(cmd)}\n")
            log.flush()
            start = log.tell()
            if limit <= 0:
                log.write(f"===== step {name}: SKIPPED, no time left\n")
                return {"cmd": " ".join(cmd), "rc": None, "seconds": 0.0, "timed_out": True, "limit_s": 0.0,
                        "skip_reason": "no time left"}
            rows_at = self.rows.stat().st_size if self.rows.exists() else 0
            p = self.current = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)
            timed_out, hang = False, None
            try:
                while p.poll() is None:
                    now = time.perf_counter() - t0
                    if simulate and hang is None:
                        hang = _find_hang(self.rows, rows_at, name)
                        if hang is not None:
                            limit = min(limit, now + 1.0)  # the simulated step hung: its limit comes now
                    if now >= limit:
                        timed_out = True
                        kill_group(p)
                        break
                    time.sleep(0.1)
            except Terminated:
                kill_group(p)
                raise
            finally:
                self.current = None
            seconds = round(time.perf_counter() - t0, 1)
            state = "TIMED OUT (process group killed)" if timed_out else f"rc={p.returncode}"
            log.write(f"\n===== step {name}: {state} after {seconds} s\n")
        tail = _read_from(self.log, start)[-2500:]
        r = {"cmd": " ".join(cmd), "rc": None if timed_out else p.returncode, "seconds": seconds,
             "timed_out": timed_out, "limit_s": round(limit, 1), "tail": tail}
        if simulate:
            r["simulated_timeout"] = True
            r["hang"] = hang
            r["hang_child_alive_after_kill"] = _alive(hang and hang.get("child_pid"))
            r["hang_process_alive_after_kill"] = _alive(hang and hang.get("pid"))
        return r


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _find_hang(rows: Path, offset: int, step: str) -> dict | None:
    if not rows.exists():
        return None
    for line in _read_from(rows, offset).splitlines():
        if '"hang"' in line:
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("kind") == "hang":
                return r
    return None


def read_rows(path: Path) -> list[dict]:
    """Every complete JSON line (a line cut by a kill is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return out
