"""Per-sample records: JSON lines per rank and attempt, crash-safe (docs/CONVENTIONS.md §3.4, §3.5).

`records/shard-r{rank}-a{attempt}.jsonl` — each process opens a new attempt file (O_EXCL, so no two writers ever
share one) and appends one line per (sample, method, attack ensemble), with flush + fsync after every batch.
A line is complete only when it ends with a newline and parses; a killed process leaves at most one partial last
line, which readers report and ignore, so its sample is simply redone.  When a rank finishes its slice it writes
`shard-r{rank}-a{attempt}.done` (record count, sha256 of its ids, seconds spent) atomically.  Batch-level
statistics (for the masking checks) go to `batch-r{rank}-a{attempt}.jsonl`, one line after each batch's records.
Adversarial images go to `adv/r{rank}-a{attempt}-b{batch}.safetensors` (tmp + os.replace) before their records.

Fault injection for the crash tests: FASTPURIFY_SWEEP_FAULT="r{rank}:kill-mid-line:{k}" makes that rank write
half of its k-th record line (0-based), fsync it, and SIGKILL itself.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .shards import write_atomic

RECORDS_DIR, ADV_DIR = "records", "adv"
# Outcome fields: what two records of the same (sample, method) must agree on to count as duplicates of one
# result.  Identity, placement and cost fields (rank, attempt, timestamp, wall_s, adv_path…) may differ.
OUTCOME_FIELDS = ("label", "clean_preds", "clean_correct", "adv_preds", "adv_correct", "winner", "attacks",
                  "margin", "linf", "l2", "large_eps_preds")
FLOAT_TOL = 1e-4  # margins and norms may differ in the last bits with batch composition (float reassociation)


def _dumps(record: dict) -> str:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), allow_nan=False)


class RecordWriter:
    """Appends records of one rank in a fresh attempt file."""

    def __init__(self, out: Path, rank: int):
        self.dir = Path(out) / RECORDS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank, self.attempt = rank, 0
        while True:  # the first attempt number whose file does not exist yet (O_EXCL: race-free per rank)
            path = self.dir / f"shard-r{rank}-a{self.attempt}.jsonl"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
                break
            except FileExistsError:
                self.attempt += 1
        self.path, self.file = path, os.fdopen(fd, "w")
        self.batch_file = open(self.dir / f"batch-r{rank}-a{self.attempt}.jsonl", "a")  # noqa: SIM115 (closed in finish)
        self.count, self.ids, self.io_s = 0, [], 0.0
        self._fault = _parse_fault(rank)

    def write(self, records: list[dict], batch: dict | None = None) -> None:
        """Append the records of one batch (then its batch line, if any), flushed and fsync'ed."""
        t0 = time.perf_counter()
        for r in records:
            line = _dumps(r) + "\n"
            if self._fault is not None and self.count == self._fault:
                self.file.write(line[: len(line) // 2])
                self.file.flush(), os.fsync(self.file.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            self.file.write(line)
            self.count += 1
            self.ids.append((r["method"], r["sample_id"]))
        self.file.flush()
        os.fsync(self.file.fileno())
        if batch is not None:
            self.batch_file.write(_dumps(batch) + "\n")
            self.batch_file.flush()
            os.fsync(self.batch_file.fileno())
        self.io_s += time.perf_counter() - t0

    def finish(self, summary: dict) -> None:
        self.file.close()
        self.batch_file.close()
        ids = "".join(f"{m}\t{i}\n" for m, i in sorted(self.ids))
        done = {"rank": self.rank, "attempt": self.attempt, "records": self.count,
                "ids_sha256": hashlib.sha256(ids.encode()).hexdigest(), "io_s": round(self.io_s, 4), **summary}
        write_atomic(self.path.with_suffix(".done"), json.dumps(done, indent=2, sort_keys=True) + "\n")


def _parse_fault(rank: int) -> int | None:
    spec = os.environ.get("FASTPURIFY_SWEEP_FAULT", "")
    if not spec:
        return None
    r, kind, k = spec.split(":")
    if kind != "kill-mid-line":
        raise ValueError(f"FASTPURIFY_SWEEP_FAULT: unknown fault {kind!r}")
    return int(k) if r == f"r{rank}" else None


@dataclass
class ShardFile:
    path: Path
    rank: int
    attempt: int
    records: list[dict] = field(default_factory=list)
    partial_tail: bool = False      # the last line was cut off (a crash while writing): ignored
    bad_lines: list[int] = field(default_factory=list)   # complete lines that do not parse: ignored, reported
    done: dict | None = None


def read_shards(out: Path) -> list[ShardFile]:
    """Every shard file of a sweep directory, complete lines only, in (rank, attempt) order."""
    d = Path(out) / RECORDS_DIR
    shards = []
    for path in d.glob("shard-r*-a*.jsonl") if d.is_dir() else []:
        rank, attempt = (int(s[1:]) for s in path.stem.split("-")[1:3])
        sf = ShardFile(path, rank, attempt)
        data = path.read_bytes()
        lines = data.split(b"\n")
        if lines[-1]:
            sf.partial_tail = True
        for n, line in enumerate(lines[:-1]):
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict) or "sample_id" not in rec or "method" not in rec:
                    raise ValueError("not a record")
            except ValueError:
                sf.bad_lines.append(n + 1)
                continue
            sf.records.append(rec)
        done = path.with_suffix(".done")
        if done.is_file():
            sf.done = json.loads(done.read_text())
        shards.append(sf)
    return sorted(shards, key=lambda s: (s.rank, s.attempt))


def read_batches(out: Path, config_id: str) -> list[dict]:
    """The batch lines (masking-check statistics) of one config, complete lines only; a batch cut by a crash has
    none, so its statistics are left out of the aggregates (its samples' records are redone and counted)."""
    lines = []
    d = Path(out) / RECORDS_DIR
    for path in sorted(d.glob("batch-r*-a*.jsonl")) if d.is_dir() else []:
        for line in path.read_bytes().split(b"\n")[:-1]:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("config_id") == config_id:
                lines.append(rec)
    return lines


def finished_pairs(shards: list[ShardFile], config_id: str) -> set[tuple[str, int]]:
    return {(r["method"], r["sample_id"]) for s in shards for r in s.records if r.get("config_id") == config_id}


def same_outcome(a: dict, b: dict) -> bool:
    """Equal outcome fields; floats within FLOAT_TOL (see above), everything else exactly."""
    return all(_close(a.get(k), b.get(k)) for k in OUTCOME_FIELDS)


def _close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= FLOAT_TOL
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == b


def save_adv_batch(out: Path, rank: int, attempt: int, batch: int, tensors: dict) -> str:
    """Write {key: tensor} atomically to one safetensors file; returns its path relative to `out`."""
    from safetensors.torch import save_file

    d = Path(out) / ADV_DIR
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"r{rank}-a{attempt}-b{batch:05d}.safetensors"
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.detach().cpu().clone() for k, v in tensors.items()}, str(tmp))  # own storage per tensor
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.relative_to(out).as_posix()
