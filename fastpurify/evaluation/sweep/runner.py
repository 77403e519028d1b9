"""`fastpurify sweep CONFIG`: one rank's share of a sweep, from the config to its records.

Order of work: validate the config, then `preflight` (open the data and select the ids, decode one image, load the
models, build every defence, check that they fit) — all before anything is written; then take this rank's lease on
the directory (a concurrent run is refused), create (or check) the sweep directory, read the finished records, pass the start barrier (torchrun only), take this rank's unpadded slice of the pending
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

from .build import attack_specs, t_star_of
from .config import SweepConfig, config_id
from .evaluate import PROTOCOL, evaluate_batch, protocol_config, run_seeds
from .lease import Lease
from .preflight import preflight
from .records import RecordWriter, finished_pairs, read_shards, save_adv_batch
from .shards import (
    batches,
    dist_env,
    ensure_sweep_dir,
    manifest_sha256,
    my_work,
    start_barrier,
    write_atomic,
)


def versions() -> dict:
    from ..._version import __version__

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


@torch.no_grad()
def _images(defence, method: str, batch_ids: list[int], x, x_adv, grid_ids: set, seed: int) -> dict:
    """Tensors for the adversarial shard: every chosen adversarial image; for the report's grid also the clean
    image, one purification of the adversarial image (illustration seeds: derived from (seed, id), no stream of
    the protocol) and the classifier's prediction on it."""
    from ...ops import derive_seeds

    out = {f"{method}/{i}/adv": x_adv[k].float() for k, i in enumerate(batch_ids)}
    rows = [k for k, i in enumerate(batch_ids) if i in grid_ids]
    if rows:
        ids = torch.tensor([batch_ids[k] for k in rows], device=x.device)
        xa = x_adv[rows]
        pur = xa if defence.purifier is None else defence.purifier(xa, seed=derive_seeds(seed + 7, ids))
        pred = defence.classifier(pur).argmax(1)
        for j, k in enumerate(rows):
            i = batch_ids[k]
            out.update({f"{method}/{i}/clean": x[k].float(), f"{method}/{i}/purified": pur[j].float(),
                        f"{method}/{i}/purified_pred": pred[j:j + 1].cpu()})
    return out


def run_sweep(cfg: SweepConfig, env=None, break_lease: bool = False) -> dict:
    """Run this rank's share; returns its summary (what its .done file holds).  break_lease: take over a lease
    held on another host (the user says that run is dead)."""
    env = env or dist_env()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
        cfg.device = str(device)
    # ---- everything that can fail on a bad config, before anything is written (the same as `sweep check`)
    plan = preflight(cfg)
    for note in plan.notes:
        _log(note)
    specs = attack_specs(cfg)
    pcfg = protocol_config(cfg)
    # ---- the lease (no concurrent run), the sweep directory, the finished records, this rank's share
    out, cid, msha = Path(cfg.out), config_id(cfg), manifest_sha256(plan.ids)
    out.mkdir(parents=True, exist_ok=True)
    lease = Lease(out, env.rank, env.world_size, break_lease=break_lease).acquire()
    try:
        return _run(cfg, env, device, plan, specs, pcfg, out, cid, msha, lease)
    finally:
        lease.release()


def _start(cfg, env, plan, out, cid, lease):
    """The sweep directory, the finished records, the barrier and this rank's share; its launch file."""
    ensure_sweep_dir(cfg, plan.manifest_text)
    done = finished_pairs(read_shards(out), cid)
    start_barrier(env, torch.device(cfg.device).type)
    pairs = my_work(plan.ids, list(plan.defences), done, env)
    writer = RecordWriter(out, env.rank)
    lease.set_attempt(writer.attempt)
    launch = {"rank": env.rank, "world_size": env.world_size, "attempt": writer.attempt, "torchrun": env.torchrun,
              "pending_pairs": len(pairs), "finished_before": len(done), "config": cfg.as_dict(),
              "threads": torch.get_num_threads(), "started": time.time(), "host": lease.info["host"],
              "pid": lease.info["pid"]}
    (out / "launches").mkdir(exist_ok=True)
    write_atomic(out / "launches" / f"r{env.rank}-a{writer.attempt}.json", json.dumps(launch, indent=2) + "\n")
    _log(f"sweep {cid} rank {env.rank}/{env.world_size} attempt {writer.attempt}: {len(pairs)} (method, image) "
         f"pairs to do; {len(done)} of {len(plan.ids) * len(plan.defences)} finished before")
    return pairs, writer


def _common(cfg, env, device, specs, cid, msha, attempt) -> dict:
    """The fields every record of this attempt shares."""
    return {"config_id": cid, "manifest_sha256": msha, "ensemble": cfg.ensemble,
            "grad_mode": "+".join(dict.fromkeys(a.grad for a in cfg.attacks)), "norm": cfg.norm, "eps": cfg.eps,
            "n_reevals": cfg.n_reevals, "n_select": cfg.n_select or cfg.n_reevals, "seeds": run_seeds(cfg.seed, specs),
            "dtype": cfg.dtype, "backend": cfg.backend or "auto", "device": device.type,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None, "versions": versions(),
            "protocol": PROTOCOL, "rank": env.rank, "world_size": env.world_size, "attempt": attempt}


def _timed_batch(defence, x, y, batch_ids, ensemble, pcfg, large_ids) -> tuple[list, dict, torch.Tensor, float]:
    """evaluate_batch and its wall time (the device synchronised, so the time is the batch's own)."""
    t0 = time.perf_counter()
    rows, batch_line, x_adv = evaluate_batch(defence, x, y, torch.tensor(batch_ids, device=x.device), ensemble,
                                             pcfg, large_ids)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return rows, batch_line, x_adv, time.perf_counter() - t0


def _sample_records(common: dict, run: dict, defence, batch_ids, rows, label_of: dict, adv_file) -> list[dict]:
    """One record per sample: the run's common fields, the protocol's row, and where the sample stands."""
    t_steps, t_s = t_star_of(defence)
    now = round(time.time(), 3)
    method = run["method"]
    return [{**common, **row, "sample_id": i, "label": label_of[i], "method": method,
             "method_name": run["method_name"], "ensemble_run": run["ensemble_run"], "t_star_steps": t_steps,
             "t_star_s": t_s, "wall_s": run["wall_s"],
             "adv_path": None if adv_file is None else f"{adv_file}#{method}/{i}/adv", "timestamp": now}
            for i, row in zip(batch_ids, rows)]


def _run(cfg, env, device, plan, specs, pcfg, out, cid, msha, lease) -> dict:
    data, ids, models, defences, ensembles = plan.data, plan.ids, plan.models, plan.defences, plan.ensembles
    pairs, writer = _start(cfg, env, plan, out, cid, lease)
    common = _common(cfg, env, device, specs, cid, msha, writer.attempt)
    label_of = dict(zip(ids, plan.labels[ids].tolist()))
    method_names = {m.label: m.name for m in cfg.methods}
    grid_ids = set(ids[:cfg.grid])
    large_ids = frozenset(ids[:cfg.large_eps_n] if cfg.large_eps else [])
    progress = Progress(len(pairs), env.rank, env.world_size, cfg.quiet)
    compute_s, t_start = 0.0, time.perf_counter()
    for b, (method, batch_ids) in enumerate(batches(pairs, cfg.batch_size)):
        defence = defences[method]
        x = data.images(batch_ids).to(device, models.input_dtype)
        y = torch.tensor([label_of[i] for i in batch_ids], device=device)
        rows, batch_line, x_adv, wall = _timed_batch(defence, x, y, batch_ids, ensembles[method], pcfg, large_ids)
        compute_s += wall
        adv_file = None
        if cfg.save_adv:
            adv_file = save_adv_batch(out, env.rank, writer.attempt, b,
                                      _images(defence, method, batch_ids, x, x_adv, grid_ids, cfg.seed))
        run = {"method": method, "method_name": method_names[method],
               "ensemble_run": [s.name for s in ensembles[method]], "wall_s": round(wall / len(batch_ids), 5)}
        writer.write(_sample_records(common, run, defence, batch_ids, rows, label_of, adv_file),
                     batch={**batch_line, "method": method, "ids": batch_ids, "config_id": cid, "wall_s": wall})
        progress.update(len(batch_ids), method)
    progress.close()
    summary = {"world_size": env.world_size, "pairs": len(pairs), "compute_s": round(compute_s, 4),
               "total_s": round(time.perf_counter() - t_start, 4), "config_id": cid}
    writer.finish(summary)
    _log(f"rank {env.rank}/{env.world_size} attempt {writer.attempt}: {writer.count} records in "
         f"{summary['total_s']:.1f} s (records I/O {writer.io_s:.3f} s)")
    return {**summary, "rank": env.rank, "attempt": writer.attempt, "records": writer.count,
            "io_s": round(writer.io_s, 4)}
