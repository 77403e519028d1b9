"""Leases on a sweep directory: a concurrent run is refused with a clear message; a lease is taken over only when
its process is gone on this host; another host's lease is never assumed dead (--break-lease says so); and
`sweep status` tells a dead attempt from a running one."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastpurify.evaluation.sweep.lease import Lease, LeaseHeld, lease_state, read_leases
from fastpurify.evaluation.sweep.merge import status
from fastpurify.evaluation.sweep.records import RecordWriter

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sweep_digits.toml"


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _write_lease(out: Path, rank: int, **info) -> None:
    d = out / "leases"
    d.mkdir(parents=True, exist_ok=True)
    base = {"rank": rank, "world_size": 1, "host": socket.gethostname(), "pid": _dead_pid(), "proc_start": None,
            "run": "", "attempt": 0, "started": time.time() - 3600, "heartbeat": time.time() - 3600,
            "heartbeat_s": 30}
    (d / f"r{rank}.json").write_text(json.dumps({**base, **info}))


def test_a_live_holder_is_refused_naming_it_and_released_on_finish(tmp_path):
    held = Lease(tmp_path, 0, 1).acquire()
    try:
        with pytest.raises(LeaseHeld, match=rf"in use by another run \(rank 0: pid \d+ on {socket.gethostname()}"):
            Lease(tmp_path, 0, 1).acquire()
    finally:
        held.release()
    assert read_leases(tmp_path) == {}
    Lease(tmp_path, 0, 1).acquire().release()  # free again


def test_a_lease_whose_process_is_gone_on_this_host_is_taken_over(tmp_path):
    _write_lease(tmp_path, 0)
    assert lease_state(read_leases(tmp_path)[0])[0] == "stale"
    lease = Lease(tmp_path, 0, 1).acquire()
    assert read_leases(tmp_path)[0]["pid"] == lease.info["pid"]
    lease.release()


def test_a_gone_process_whose_heartbeat_has_not_stopped_is_waited_out_not_taken_at_once(tmp_path):
    """Gone from this host's process table is not enough (a pid can be invisible from another PID namespace): the
    taker waits until the heartbeat counts as stopped; a heartbeat that moves meanwhile is a live holder."""
    _write_lease(tmp_path, 0, heartbeat=time.time(), heartbeat_s=0.1)
    assert lease_state(read_leases(tmp_path)[0])[0] == "ending"
    lease = Lease(tmp_path, 0, 1).acquire()  # waits ~0.3 s, then takes it
    lease.release()
    path = tmp_path / "leases" / "r0.json"
    _write_lease(tmp_path, 0, heartbeat=time.time(), heartbeat_s=0.2)
    beat = subprocess.Popen([sys.executable, "-c", "import json, sys, time\n"
                             f"p = {str(path)!r}\nfor _ in range(40):\n"
                             "    d = json.load(open(p)); d['heartbeat'] = time.time(); json.dump(d, open(p, 'w'))\n"
                             "    time.sleep(0.05)\n"])
    try:
        with pytest.raises(LeaseHeld, match="its heartbeat moved"):
            Lease(tmp_path, 0, 1).acquire()
    finally:
        beat.kill()
        beat.wait()


def test_a_live_process_with_a_stopped_heartbeat_is_not_stale(tmp_path):
    """Slow or hung is not dead: a holder whose process exists keeps its lease, whatever its heartbeat says."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as p:
        try:
            _write_lease(tmp_path, 0, pid=p.pid, heartbeat=time.time() - 3600)
            state, why = lease_state(read_leases(tmp_path)[0])
            assert state == "live" and "heartbeat stopped: hung?" in why
            with pytest.raises(LeaseHeld):
                Lease(tmp_path, 0, 1).acquire()
        finally:
            p.kill()


def test_another_hosts_lease_is_never_assumed_dead(tmp_path):
    _write_lease(tmp_path, 0, host="node-17", heartbeat=time.time() - 3600)
    state, why = lease_state(read_leases(tmp_path)[0])
    assert state == "unknown" and "heartbeat stopped" in why and "node-17" in why
    with pytest.raises(LeaseHeld, match="node-17.*--break-lease"):
        Lease(tmp_path, 0, 1).acquire()
    lease = Lease(tmp_path, 0, 1, break_lease=True).acquire()  # the user says it is dead
    assert read_leases(tmp_path)[0]["host"] == socket.gethostname()
    lease.release()


def test_another_runs_rank_blocks_a_run_with_other_ranks(tmp_path):
    """A live world-1 run holds rank 0; a new world-2 run's rank 1 would work beside it: refused too."""
    held = Lease(tmp_path, 0, 1, environ={}).acquire()
    try:
        with pytest.raises(LeaseHeld, match="rank 0"):
            Lease(tmp_path, 1, 2, environ={"TORCHELASTIC_RUN_ID": "new"}).acquire()
    finally:
        held.release()
    # peers of one run do not block each other: torchrun's, or ranks started by hand (no token, one world size)
    for env in ({"TORCHELASTIC_RUN_ID": "abc"}, {}):
        a, b = Lease(tmp_path, 0, 2, environ=env).acquire(), Lease(tmp_path, 1, 2, environ=env).acquire()
        a.release(), b.release()


def test_a_second_sweep_on_a_held_directory_is_refused_before_any_work(tmp_path, capsys):
    from fastpurify.evaluation.sweep import main

    out = tmp_path / "out"
    out.mkdir()
    held = Lease(out, 0, 1).acquire()
    try:
        rc = main([str(EXAMPLE), "--set", f"out={json.dumps(str(out))}", "--set", "data.n=2", "--quiet"])
    finally:
        held.release()
    err = capsys.readouterr().err
    assert rc == 2 and "is in use by another run" in err and "Traceback" not in err
    assert not (out / "records").exists()


def test_status_tells_dead_from_running(tmp_path):
    from tests.test_sweep import _fake_sweep

    cfg = _fake_sweep(tmp_path, write={0: [("none", 0)]})
    out = Path(cfg.out)
    w = RecordWriter(out, 1)  # an unfinished attempt of rank 1 ...
    w.write([])
    _write_lease(out, 1, attempt=w.attempt)  # ... whose process is gone
    assert "DEAD: pid" in status(out) and "(process gone, heartbeat stopped)" in status(out)
    live = Lease(out, 1, 1).acquire()  # taken over by a live process: that attempt runs
    live.set_attempt(w.attempt)
    try:
        assert f"r1/a{w.attempt}" in status(out) and "running (pid" in status(out)
    finally:
        live.release()
    assert "DEAD: ended without finishing" in status(out)  # no lease of the attempt left


def test_a_sweep_started_while_another_process_holds_the_directory_is_refused(tmp_path):
    """Two processes, as after a restart while the old ranks still run: the second `fastpurify sweep` exits 2
    naming the holder, writes no record, and leaves the holder's lease alone."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from fastpurify.evaluation.sweep.lease import Lease; "
         f"Lease({str(out)!r}, 0, 1).acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        r = subprocess.run([sys.executable, "-m", "fastpurify", "sweep", str(EXAMPLE), "--set",
                            f"out={json.dumps(str(out))}", "--set", "data.n=2", "--quiet"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and f"pid {holder.pid} on {socket.gethostname()}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr and not (out / "records").exists()
        assert read_leases(out)[0]["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()
