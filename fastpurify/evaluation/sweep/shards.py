"""Manifest, the stored config, and unpadded shards over torchrun's environment contract (docs/CONVENTIONS.md §3).

Each process reads RANK / WORLD_SIZE / LOCAL_RANK (0 / 1 / 0 when started alone; Slurm arrays can set them).
Under torchrun a gloo (CPU) or nccl (GPU) group is created for exactly one barrier at start — after every rank has
read the finished records, before any rank writes — so all ranks split the same pending list; it is then
destroyed, and nothing later can hang on a dead peer.  Without torchrun (Slurm arrays, hand-set variables) there
is no group and each rank splits the manifest itself (`ids[r::W]`, then drops what is finished), which needs no
common snapshot.  Every merge is file based.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from .config import ConfigError, SweepConfig, changed_fields, config_id, identity

CONFIG_FILE, MANIFEST_FILE = "config.json", "manifest.jsonl"


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    torchrun: bool          # launched by torchrun (a process group is available)


def dist_env(environ=None) -> DistEnv:
    env = os.environ if environ is None else environ
    try:
        rank, world, local = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    except ValueError as e:
        raise ConfigError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from None
    if not (world >= 1 and 0 <= rank < world and local >= 0):
        raise ConfigError(f"bad distributed environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return DistEnv(rank, world, local, "TORCHELASTIC_RUN_ID" in env and world > 1)


def start_barrier(env: DistEnv, device_type: str, timeout_s: float = 1800.0) -> None:
    """The one collective of a sweep (see the module docstring); a no-op without torchrun."""
    if not env.torchrun:
        return
    import torch.distributed as dist

    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    try:
        dist.barrier(device_ids=[env.local_rank]) if backend == "nccl" else dist.barrier()
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ manifest
def manifest_sha256(ids: list[int]) -> str:
    """sha256 over the ordered ids, one decimal id per line."""
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()


def manifest_lines(ids: list[int], labels, sources) -> str:
    return "".join(json.dumps({"sample_id": i, "label": int(labels[i]), "source": sources(i)}, sort_keys=True) + "\n"
                   for i in ids)


def read_manifest(out: Path) -> list[dict]:
    path = Path(out) / MANIFEST_FILE
    if not path.is_file():
        raise ConfigError(f"{out} has no {MANIFEST_FILE}: not a sweep directory (or the sweep never started)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_atomic(path: Path, text: str) -> None:
    """tmp + fsync + os.replace: readers see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def ensure_sweep_dir(cfg: SweepConfig, manifest_text: str) -> None:
    """Create the directory with config.json and manifest.jsonl, or check that they match: a changed config
    under the same directory is refused, naming the changed fields.  Every rank may call this at once (all
    write the same bytes)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cid, ident = config_id(cfg), identity(cfg)
    stored = out / CONFIG_FILE
    if stored.is_file():
        old = json.loads(stored.read_text())
        if old["config_id"] != cid:
            fields = changed_fields(old["identity"], ident)
            raise ConfigError(f"{out} holds a sweep with another config (id {old['config_id']}, this one {cid}); "
                              f"changed: {', '.join(fields) or '(none named)'}. Use a new out directory, or "
                              "restore those fields to resume.")
    else:
        write_atomic(stored, json.dumps({"config_id": cid, "identity": ident, "config": cfg.as_dict()},
                                        indent=2, sort_keys=True) + "\n")
    man = out / MANIFEST_FILE
    if man.is_file() and man.read_text() != manifest_text:
        raise ConfigError(f"{man} differs from the manifest this config gives (the data files changed?)")
    if not man.is_file():
        write_atomic(man, manifest_text)


def read_stored_config(out: Path) -> dict:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{out} has no {CONFIG_FILE}: not a sweep directory")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------ shards
def my_work(ids: list[int], methods: list[str], done: set[tuple[str, int]], env: DistEnv) -> list[tuple[str, int]]:
    """This rank's (method, id) pairs: a disjoint, unpadded slice of the pending ids (ids with any method
    unfinished), method by method in manifest order.  Under torchrun every rank read the same `done` before the
    start barrier, so slicing the pending list is safe; otherwise the slice is of the manifest."""
    if env.torchrun:
        pending = [i for i in ids if any((m, i) not in done for m in methods)]
        mine = set(pending[env.rank::env.world_size])
    else:
        mine = set(ids[env.rank::env.world_size])
    return [(m, i) for m in methods for i in ids if i in mine and (m, i) not in done]


def batches(pairs: list[tuple[str, int]], batch_size: int) -> list[tuple[str, list[int]]]:
    """Consecutive pairs of one method, at most batch_size ids each."""
    out: list[tuple[str, list[int]]] = []
    for m, i in pairs:
        if out and out[-1][0] == m and len(out[-1][1]) < batch_size:
            out[-1][1].append(i)
        else:
            out.append((m, [i]))
    return out
