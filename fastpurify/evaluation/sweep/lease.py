"""One lease per rank on a sweep directory: `leases/r{rank}.json` holds the host, pid, the process's start time, the
run it belongs to, the attempt and a heartbeat rewritten every `HEARTBEAT_S` seconds by a daemon thread.

A rank refuses to start while another live run holds its lease, or any lease of another run (torchrun's run id,
a Slurm job id and the world size tell runs apart), because two runs on one directory write duplicate records.
A lease is stale — taken over — only when it was taken on this host, its heartbeat stopped and its process is gone
(pid absent, or reused by a process that started later); a rank restarted right after a kill waits for the old
heartbeat to count as stopped (STOPPED_AFTER heartbeats).  On another host nothing is assumed: the user says the
holder is dead with `--break-lease`.  The lease is released when the rank finishes or fails; a killed rank leaves
it behind, which is how `sweep status` tells a dead attempt from a slow one.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from .config import ConfigError

LEASE_DIR = "leases"
HEARTBEAT_S = float(os.environ.get("FASTPURIFY_SWEEP_HEARTBEAT_S", "30"))
STOPPED_AFTER = 3  # heartbeats missed before a heartbeat counts as stopped


class LeaseHeld(ConfigError):
    """Another run holds a lease of this sweep directory."""


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid from the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    now = _proc_start(pid)
    return start is None or now is None or now == start


def run_token(environ=None) -> str:
    env = os.environ if environ is None else environ
    for key in ("TORCHELASTIC_RUN_ID", "SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID"):
        if env.get(key):
            return f"{key}={env[key]}"
    return ""


def lease_state(info: dict, now: float | None = None) -> tuple[str, str]:
    """('live' | 'ending' | 'stale' | 'unknown', why).  On this host: a process that exists holds its lease, even
    with its heartbeat stopped (slow or hung is not dead); a process that is gone leaves a stale lease once its
    heartbeat has stopped too ('ending' until then: a pid may be invisible from another PID namespace, a heartbeat
    is not).  Another host → unknown, never assumed dead; the why says whether its heartbeat stopped."""
    now = time.time() if now is None else now
    age = now - info.get("heartbeat", 0)
    limit = STOPPED_AFTER * info.get("heartbeat_s", HEARTBEAT_S)
    stopped = age > limit
    where = f"pid {info.get('pid')} on {info.get('host')}, last heartbeat {age:.0f} s ago"
    if info.get("host") != socket.gethostname():
        return "unknown", where + (" (heartbeat stopped: dead or hung, on another host)" if stopped else "")
    if process_alive(info["pid"], info.get("proc_start")):
        return "live", where + (" (process alive, heartbeat stopped: hung?)" if stopped else "")
    if not stopped:
        return "ending", where + f" (process gone; its heartbeat counts as stopped after {limit:.0f} s)"
    return "stale", where + " (process gone, heartbeat stopped)"


def _settled(path: Path, info: dict) -> tuple[dict, str, str]:
    """Wait out an 'ending' lease (a holder gone from this host whose heartbeat has not yet stopped): sleep until
    it would have stopped, re-read; a heartbeat that moved meanwhile means a live holder after all."""
    state, why = lease_state(info)
    while state == "ending":
        limit = STOPPED_AFTER * info.get("heartbeat_s", HEARTBEAT_S)
        wait = max(0.05, info.get("heartbeat", 0) + limit - time.time() + 0.05)
        print(f"lease {path.name}: {why}; waiting {wait:.0f} s before taking it over", file=sys.stderr, flush=True)
        time.sleep(wait)
        try:
            again = json.loads(path.read_text())
        except (ValueError, OSError):
            return info, "stale", why  # removed or being replaced: the taker's O_EXCL decides
        if again.get("heartbeat") != info.get("heartbeat") or again.get("pid") != info.get("pid"):
            return again, "live", lease_state(again)[1] + " (its heartbeat moved)"
        info, (state, why) = again, lease_state(again)
    return info, state, why


def read_leases(out) -> dict[int, dict]:
    d = Path(out) / LEASE_DIR
    leases = {}
    for p in sorted(d.glob("r*.json")) if d.is_dir() else []:
        try:
            leases[int(p.stem[1:])] = json.loads(p.read_text())
        except (ValueError, OSError):
            continue  # being replaced right now; the next reader sees it
    return leases


class Lease:
    """The lease of one rank; `acquire` raises LeaseHeld naming the holder; `release` removes it if still ours."""

    def __init__(self, out, rank: int, world_size: int, *, break_lease: bool = False, environ=None):
        self.path = Path(out) / LEASE_DIR / f"r{rank}.json"
        self.rank, self.break_lease = rank, break_lease
        self.info = {"rank": rank, "world_size": world_size, "host": socket.gethostname(), "pid": os.getpid(),
                     "proc_start": _proc_start(os.getpid()), "run": run_token(environ), "attempt": None,
                     "started": time.time(), "heartbeat": time.time(), "heartbeat_s": HEARTBEAT_S}
        self._stop = threading.Event()
        self._thread = None

    def _refuse(self, holder: dict, why: str) -> None:
        raise LeaseHeld(f"{self.path.parent.parent} is in use by another run (rank {holder.get('rank')}: {why}). "
                        "Wait for it, stop it, or use another out directory; if that run is dead on another host, "
                        "rerun with --break-lease")

    def _check_others(self) -> None:
        for rank, other in read_leases(self.path.parent.parent).items():
            # our own rank is handled in acquire; a peer rank of this run has the same run token and world size
            # (without a token — ranks started by hand — the world size alone: two such runs of one size still
            # collide on every rank's own lease)
            if rank == self.rank or (other.get("run") == self.info["run"]
                                     and other.get("world_size") == self.info["world_size"]):
                continue
            other, state, why = _settled(self.path.with_name(f"r{rank}.json"), other)
            if state == "live" or (state == "unknown" and not self.break_lease):
                self._refuse(other, why)

    def acquire(self) -> Lease:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._check_others()
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text())
                except (ValueError, OSError):
                    time.sleep(0.1)
                    continue
                holder, state, why = _settled(self.path, holder)
                if state == "live" or (state == "unknown" and not self.break_lease):
                    self._refuse(holder, why)
                # stale (or broken on request): move it aside; O_EXCL then lets exactly one taker in
                try:
                    os.replace(self.path, self.path.with_name(f".{self.path.name}.stale.{os.getpid()}"))
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.info, f)
            self._thread = threading.Thread(target=self._beat, daemon=True, name=f"lease-r{self.rank}")
            self._thread.start()
            return self
        raise LeaseHeld(f"{self.path}: could not take the lease (contended); try again")

    def _write(self) -> None:
        from .shards import write_atomic

        self.info["heartbeat"] = time.time()
        write_atomic(self.path, json.dumps(self.info))

    def set_attempt(self, attempt: int) -> None:
        self.info["attempt"] = attempt
        self._write()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except OSError:
                pass  # a full disk must not kill the run; the lease then looks stopped, which it is

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            mine = json.loads(self.path.read_text())
            if mine.get("pid") == self.info["pid"] and mine.get("host") == self.info["host"]:
                self.path.unlink()
        except (OSError, ValueError):
            pass
