"""Merge the records of a sweep directory with a completeness check (docs/CONVENTIONS.md §3.6), and `sweep status`.

Merge: parse every shard (complete lines only), keep the records of this directory's config id, group by
(method, sample id) and compare the ids with the manifest (missing / unexpected).  A (method, sample) recorded more
than once is a duplicate — two runs wrote into one directory, which the leases exist to prevent — and is named with
every record's place, never merged silently: with identical outcomes the report is written from the first record
(in (rank, attempt, line) order) and says so prominently, and `sweep report` exits non-zero; with different outcomes
it is a conflict, which stops the report.  `sweep status` tells a live attempt from a dead one by its lease.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .lease import lease_state, read_leases
from .records import ShardFile, read_shards, same_outcome
from .shards import read_manifest, read_stored_config


@dataclass
class Merged:
    out: Path
    stored: dict                      # config.json: config_id, identity, config
    manifest: list[dict]
    methods: list[str]
    rows: dict[str, dict[int, dict]]  # method → sample id → record
    missing: dict[str, list[int]]
    unexpected: dict[str, list[int]]
    duplicates: dict[str, list[int]]  # identical duplicates (first kept, reported)
    conflicts: list[dict]             # differing duplicates
    dup_where: dict = field(default_factory=dict)  # (method, id) → every record's 'shard:line'
    shards: list[ShardFile] = field(default_factory=list)
    foreign: int = 0                  # records of another config id (ignored)

    @property
    def config_id(self) -> str:
        return self.stored["config_id"]

    @property
    def ids(self) -> list[int]:
        return [e["sample_id"] for e in self.manifest]

    @property
    def complete(self) -> bool:
        return not any(self.missing.values()) and not any(self.unexpected.values()) and not self.conflicts


def merge(out) -> Merged:
    out = Path(out)
    stored, manifest = read_stored_config(out), read_manifest(out)
    methods = [m["label"] for m in stored["config"]["methods"]]
    cid = stored["config_id"]
    shards = read_shards(out)
    rows: dict[str, dict[int, dict]] = {m: {} for m in methods}
    where: dict[tuple[str, int], str] = {}
    dups: dict[str, set[int]] = {m: set() for m in methods}
    unexpected: dict[str, set[int]] = {}
    conflicts, foreign, dup_where = [], 0, {}
    manifest_ids = {e["sample_id"] for e in manifest}
    for s in shards:
        for n, rec in enumerate(s.records):
            if rec.get("config_id") != cid:
                foreign += 1
                continue
            m, i = rec["method"], rec["sample_id"]
            if m not in rows or i not in manifest_ids:
                unexpected.setdefault(m, set()).add(i)
                continue
            here = f"{s.path.name}:{n + 1}"
            if i not in rows[m]:
                rows[m][i], where[(m, i)] = rec, here
            elif same_outcome(rows[m][i], rec):
                dups[m].add(i)
                dup_where.setdefault((m, i), [where[(m, i)]]).append(here)
            else:
                conflicts.append({"method": m, "sample_id": i, "first": where[(m, i)], "other": here})
    missing = {m: [i for i in (e["sample_id"] for e in manifest) if i not in rows[m]] for m in methods}
    return Merged(out, stored, manifest, methods, rows, missing, {m: sorted(v) for m, v in unexpected.items()},
                  {m: sorted(v) for m, v in dups.items()}, conflicts, dup_where, shards, foreign)


def _ids_text(ids: list[int], limit: int = 20) -> str:
    head = ", ".join(str(i) for i in ids[:limit])
    return head + (f", … ({len(ids)} in all)" if len(ids) > limit else "")


def completeness_text(mg: Merged) -> str:
    lines = []
    for m in mg.methods:
        if mg.missing[m]:
            lines.append(f"  {m}: {len(mg.missing[m])} of {len(mg.manifest)} missing: {_ids_text(mg.missing[m])}")
        if mg.duplicates[m]:
            lines.append(f"  DUPLICATES {m}: {len(mg.duplicates[m])} ids recorded more than once (identical "
                         f"outcomes; two runs wrote into this directory): {_ids_text(mg.duplicates[m])}")
    for m, ids in mg.unexpected.items():
        lines.append(f"  {m}: {len(ids)} records not in the manifest / config: {_ids_text(ids)}")
    for c in mg.conflicts[:20]:
        lines.append(f"  CONFLICT {c['method']} id {c['sample_id']}: {c['first']} and {c['other']} differ")
    for s in mg.shards:
        if s.partial_tail:
            lines.append(f"  {s.path.name}: partial last line (a crash while writing) ignored; its sample is redone")
        if s.bad_lines:
            lines.append(f"  {s.path.name}: unparseable lines {s.bad_lines[:10]} ignored")
    if mg.foreign:
        lines.append(f"  {mg.foreign} records of another config id ignored")
    return "\n".join(lines)


def attempt_state(s: ShardFile, leases: dict[int, dict], now: float) -> tuple[str, bool]:
    """(what an attempt is doing, whether it is running) from its .done file and its rank's lease."""
    if s.done is not None:
        return "done", False
    lease = leases.get(s.rank)
    if lease is None or lease.get("attempt") != s.attempt:
        return "DEAD: ended without finishing (killed or failed; no lease of this attempt left)", False
    state, why = lease_state(lease, now)
    if state in ("stale", "ending"):
        return f"DEAD: {why}", False
    if state == "live":
        return f"running ({why})", True
    return f"unknown: {why}", True  # another host: its heartbeat is all there is to go by


def status(out) -> str:
    """Done / pending per method and progress per attempt (records, rate, ETA, live or dead) of a sweep
    directory."""
    mg = merge(out)
    n = len(mg.manifest)
    lines = [f"sweep {mg.out}  config {mg.config_id}  {n} images × {len(mg.methods)} methods",
             f"{'method':24s} {'done':>7s} {'pending':>8s}"]
    for m in mg.methods:
        lines.append(f"{m:24s} {len(mg.rows[m]):7d} {len(mg.missing[m]):8d}")
    total_done = sum(len(r) for r in mg.rows.values())
    lines.append(f"{'all':24s} {total_done:7d} {n * len(mg.methods) - total_done:8d}"
                 + ("  (COMPLETE)" if mg.complete else ""))
    lines.append(f"{'rank/attempt':14s} {'records':>8s} {'of':>6s} {'img/s':>8s} {'ETA':>9s}  state")
    now, leases = time.time(), read_leases(out)
    for s in mg.shards:
        launch = Path(out) / "launches" / f"r{s.rank}-a{s.attempt}.json"
        info = json.loads(launch.read_text()) if launch.is_file() else {}
        todo, started = info.get("pending_pairs"), info.get("started")
        last = max((r.get("timestamp", 0) for r in s.records), default=None)
        rate = len(s.records) / max(1e-9, (last - started)) if last and started and s.records else None
        state, running = attempt_state(s, leases, now)
        if s.partial_tail:
            state += "; partial last line (crash, or being written)"
        eta = f"{(todo - len(s.records)) / rate:8.0f}s" if rate and todo is not None and running else "-"
        lines.append(f"r{s.rank}/a{s.attempt:<11d} {len(s.records):8d} {todo if todo is not None else '?':>6} "
                     f"{rate if rate is None else round(rate, 2)!s:>8s} {eta:>9s}  {state}")
    problems = completeness_text(mg)
    dup = any(mg.duplicates.values())
    return "\n".join(lines) + ("\n" + problems if problems and (mg.conflicts or dup) else "")
