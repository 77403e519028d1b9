"""`fastpurify sweep CONFIG`: one rank's share of a sweep, from the config to its records.

Order of work: validate the config, open the data and select the ids, load the models and build every defence,
check that they fit the data — all before anything is written; then create (or check) the sweep directory,
read the finished records, pass the start barrier (torchrun only), take this rank's unpadded slice of the pending
(method, id) pairs and run it in batches, one fsync'ed group of record lines per batch.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from .config import SweepConfig, config_id
from .data import open_dataset, select_ids
from .defences import build_defence, check_shapes, load_models
from .evaluate import PROTOCOL, evaluate_batch, run_seeds
from .records import RecordWriter, finished_pairs, read_shards, save_adv_batch
from .shards import (
    batches,
    dist_env,
    ensure_sweep_dir,
    manifest_lines,
    manifest_sha256,
    my_work,
    start_barrier,
    write_atomic,
)


def versions() -> dict:
    from ... import __version__

    out = {"fastpurify": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for pkg in ("numpy", "triton"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """Per-rank progress on stderr: images/s, ETA and the current method (tqdm); silent when quiet."""

    def __init__(self, total: int, rank: int, world: int, quiet: bool):
        self.bar = None
        if not quiet and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", file=sys.stderr, mininterval=1.0, position=rank,
                            desc=f"rank {rank}/{world}", dynamic_ncols=True)
        self.rank, self.world = rank, world

    def update(self, n: int, method: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"rank {self.rank}/{self.world} {method}", refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_sweep(cfg: SweepConfig, env=None) -> dict:
    """Run this rank's share; returns its summary (what its .done file holds)."""
    env = env or dist_env()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        cfg.device = str(device)
    # ---- everything that can fail on a bad config, before anything is written
    data = open_dataset(cfg.data)
    ids = select_ids(cfg.data, data)
    labels = data.labels()
    manifest_text = manifest_lines(ids, labels, data.source)
    models = load_models(cfg)
    defences = {m.label: build_defence(m, models, cfg) for m in cfg.methods}
    check_shapes(models, data.images(ids[:1]), int(labels[ids].max()) + 1)
    # ---- the sweep directory, the finished records, this rank's share
    ensure_sweep_dir(cfg, manifest_text)
    out, cid, msha = Path(cfg.out), config_id(cfg), manifest_sha256(ids)
    done = finished_pairs(read_shards(out), cid)
    start_barrier(env, device.type)
    pairs = my_work(ids, list(defences), done, env)
    writer = RecordWriter(out, env.rank)
    launch = {"rank": env.rank, "world_size": env.world_size, "attempt": writer.attempt, "torchrun": env.torchrun,
              "pending_pairs": len(pairs), "finished_before": len(done), "config": cfg.as_dict(),
              "threads": torch.get_num_threads(), "started": time.time()}
    (out / "launches").mkdir(exist_ok=True)
    write_atomic(out / "launches" / f"r{env.rank}-a{writer.attempt}.json", json.dumps(launch, indent=2) + "\n")
    _log(f"sweep {cid} rank {env.rank}/{env.world_size} attempt {writer.attempt}: {len(pairs)} (method, image) "
         f"pairs to do; {len(done)} of {len(ids) * len(defences)} finished before")

    seeds = run_seeds(cfg.seed, [a.name for a in cfg.attacks])
    common = {"config_id": cid, "manifest_sha256": msha, "ensemble": cfg.ensemble,
              "grad_mode": "+".join(dict.fromkeys(a.grad for a in cfg.attacks)), "norm": cfg.norm, "eps": cfg.eps,
              "n_reevals": cfg.n_reevals, "seeds": seeds, "dtype": cfg.dtype, "backend": cfg.backend or "auto",
              "device": device.type, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "versions": versions(), "protocol": PROTOCOL, "rank": env.rank, "world_size": env.world_size,
              "attempt": writer.attempt}
    label_of = dict(zip(ids, labels[ids].tolist()))
    grid_ids = set(ids[:cfg.grid])
    progress = Progress(len(pairs), env.rank, env.world_size, cfg.quiet)
    compute_s, t_start = 0.0, time.perf_counter()
    for b, (method, batch_ids) in enumerate(batches(pairs, cfg.batch_size)):
        defence = defences[method]
        x = data.images(batch_ids).to(device, models.input_dtype)
        y = torch.tensor([label_of[i] for i in batch_ids], device=device)
        t0 = time.perf_counter()
        rows, images = evaluate_batch(defence, x, y, torch.tensor(batch_ids, device=device), cfg.attacks,
                                      eps=cfg.eps, norm=cfg.norm, n_reevals=cfg.n_reevals, seeds=seeds)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
        compute_s += wall
        adv_file = None
        if cfg.save_adv:
            tensors = {}
            for k, i in enumerate(batch_ids):
                tensors[f"{method}/{i}/adv"] = images["adv"][k].float()
                if i in grid_ids:
                    tensors[f"{method}/{i}/clean"] = x[k].float()
                    tensors[f"{method}/{i}/purified"] = images["purified"][k].float()
            adv_file = save_adv_batch(out, env.rank, writer.attempt, b, tensors)
        meta = defence.describe()
        now = round(time.time(), 3)
        writer.write([{**common, **row, "sample_id": i, "label": label_of[i], "method": method,
                       "method_name": defence.name, "t_star_steps": meta["t_star_steps"],
                       "t_star_s": meta["t_star_s"], "wall_s": round(wall / len(batch_ids), 5),
                       "adv_path": None if adv_file is None else f"{adv_file}#{method}/{i}/adv", "timestamp": now}
                      for i, row in zip(batch_ids, rows)])
        progress.update(len(batch_ids), method)
    progress.close()
    summary = {"world_size": env.world_size, "pairs": len(pairs), "compute_s": round(compute_s, 4),
               "total_s": round(time.perf_counter() - t_start, 4), "config_id": cid}
    writer.finish(summary)
    _log(f"rank {env.rank}/{env.world_size} attempt {writer.attempt}: {writer.count} records in "
         f"{summary['total_s']:.1f} s (records I/O {writer.io_s:.3f} s)")
    return {**summary, "rank": env.rank, "attempt": writer.attempt, "records": writer.count,
            "io_s": round(writer.io_s, 4)}
