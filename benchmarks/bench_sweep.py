"""Sweep throughput: 2 gloo ranks vs 1 rank on the CPU, records overhead vs purification, and a GPU variant.

    python benchmarks/bench_sweep.py                     # CPU → benchmarks/results/cpu/bench_sweep.json
    python benchmarks/bench_sweep.py --n 16              # fewer images
    python benchmarks/bench_sweep.py --gpu-prep DIR      # GPU: write random-weight NCSN++ / WRN-28-10 files, random
                                                         # CIFAR-10-shaped data and DIR/sweep_gpu.toml; prints the
                                                         # torchrun command
    python benchmarks/bench_sweep.py --summarize OUT     # images/s per rank (per GPU) of a finished sweep directory

CPU: the same digits sweep (2 methods × a 2-attack ensemble, fp32, batch 8) runs three times in fresh processes
and fresh directories: one rank with 1 torch thread, one rank with 2 threads, and 2 gloo ranks under torchrun with
1 thread each (2 cores in all).  Throughput = (method, image) pairs / seconds, both from the wall clock of the
whole command (process start, imports, model loading included) and from the compute time the ranks record in
their .done files (the slowest rank).  Records overhead = seconds spent serialising + writing + fsync'ing record
lines (RecordWriter.io_s) per record, against the compute seconds per record.  Run it alone: under flock
/work/cpu.lock on the shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sweep_digits.toml"
RESULTS = ROOT / "benchmarks" / "results" / "cpu" / "bench_sweep.json"
CPU_SETS = ['methods=[{name="diffpure", t_star=30}, {name="ddpm", t_star=30}]',
            'attacks=[{name="pgd-full", steps=3, eot=1}, {name="pgd-bpda", steps=3, eot=1, grad="bpda"}]',
            "n_reevals=2", "batch_size=8", "save_adv=false", "quiet=true", 'dtype="fp32"']


def summarize(out: Path) -> dict:
    """Per-rank records, compute and I/O seconds from the .done files of the last attempt of each rank."""
    done = {}
    for f in sorted((Path(out) / "records").glob("*.done")):
        d = json.loads(f.read_text())
        done[d["rank"]] = d  # later attempts overwrite earlier ones (sorted names: a0 < a1 …)
    ranks = [done[r] for r in sorted(done)]
    records = sum(d["records"] for d in ranks)
    slowest = max((d["compute_s"] for d in ranks), default=0.0)
    io = sum(d["io_s"] for d in ranks)
    compute = sum(d["compute_s"] for d in ranks)
    return {"ranks": len(ranks), "records": records, "compute_s_slowest_rank": slowest,
            "pairs_per_s_compute": round(records / slowest, 4) if slowest else None,
            "per_rank": [{"rank": d["rank"], "records": d["records"], "compute_s": d["compute_s"], "io_s": d["io_s"],
                          "pairs_per_s": round(d["records"] / d["compute_s"], 4) if d["compute_s"] else None}
                         for d in ranks],
            "records_io_s_per_record": round(io / records, 6) if records else None,
            "compute_s_per_record": round(compute / records, 6) if records else None,
            "records_io_fraction": round(io / compute, 6) if compute else None}


def _run(out: Path, n: int, ranks: int, threads: int) -> dict:
    sets = [f"out={json.dumps(str(out))}", f"data.n={n}", f"threads={threads}", *CPU_SETS]
    args = [a for s in sets for a in ("--set", s)]
    if ranks == 1:
        cmd = [sys.executable, "-m", "fastpurify", "sweep", str(EXAMPLE), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
               "-m", "fastpurify", "sweep", str(EXAMPLE), *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    s = summarize(out)
    return {"ranks": ranks, "threads_per_rank": threads, "wall_s": round(wall, 3),
            "load_avg_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "pairs_per_s_wall": round(s["records"] / wall, 4), **s}


def cpu(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: _run(Path(tmp) / name, n, ranks, threads)
                for name, ranks, threads in (("1rank_1thread", 1, 1), ("1rank_2threads", 1, 2),
                                             ("2ranks_1thread", 2, 1))}
    two, one1, one2 = runs["2ranks_1thread"], runs["1rank_1thread"], runs["1rank_2threads"]
    ratio = {
        "2ranks_vs_1rank_1thread_compute": round(two["pairs_per_s_compute"] / one1["pairs_per_s_compute"], 3),
        "2ranks_vs_1rank_2threads_compute": round(two["pairs_per_s_compute"] / one2["pairs_per_s_compute"], 3),
        "2ranks_vs_1rank_1thread_wall": round(two["pairs_per_s_wall"] / one1["pairs_per_s_wall"], 3),
        "2ranks_vs_1rank_2threads_wall": round(two["pairs_per_s_wall"] / one2["pairs_per_s_wall"], 3),
    }
    import torch

    return {"benchmark": "bench_sweep", "config": {"base": str(EXAMPLE.relative_to(ROOT)), "set": CPU_SETS,
                                                   "images": n, "pairs": 2 * n},
            "runs": runs, "ratios": ratio, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "load_avg_after": os.getloadavg(), "torch": torch.__version__, "python": platform.python_version()}


GPU_TOML = """# GPU throughput of a sweep on NCSN++ (DiffPure's CIFAR-10 architecture) with RANDOM weights: images/s only,
# the accuracies are meaningless.  Written by benchmarks/bench_sweep.py --gpu-prep.
out = "{out}"
eps = 0.031372549
n_reevals = 2
batch_size = {batch}
device = "cuda"
dtype = "fp32"
quiet = true
[data]
dataset = "cifar10"
path = "x.npy"
labels = "y.npy"
n = {n}
[model]
diffusion = "ncsnpp_random.safetensors"
classifier = "wrn28_random.safetensors"
[[methods]]
name = "diffpure-cifar10"
steps = {steps}           # VP-SDE from t* = 0.1 in {steps} steps (DiffPure: 100)
[[methods]]
name = "diffpure-cifar10"
t_star = 0.05             # label "diffpure-cifar10@0.05"
steps = {steps}
[[attacks]]
name = "pgd-full"
steps = 2
eot = 4
[[attacks]]
name = "pgd-bpda"
steps = 2
eot = 4
grad = "bpda"
"""


def gpu_prep(d: Path, n: int, steps: int, batch: int) -> None:
    """Random-weight NCSN++ and WRN-28-10 files, random uint8 CIFAR-10-shaped images, and the config."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from fastpurify.models.classifiers import WideResNet
    from fastpurify.models.loaders import save_pretrained
    from fastpurify.models.ncsnpp import NCSNPP_CIFAR10, NCSNpp
    from fastpurify.models.pretrained import PretrainedDiffusion

    d.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = NCSNpp(**NCSNPP_CIFAR10).eval()
    save_pretrained(PretrainedDiffusion(net, image_size=32, channels=3, time_input="continuous",
                                        meta={"kind": "ncsnpp"}), d / "ncsnpp_random.safetensors")
    save_file({k: v.contiguous() for k, v in WideResNet(28, 10).eval().state_dict().items()},
              str(d / "wrn28_random.safetensors"))
    rng = np.random.RandomState(0)
    np.save(d / "x.npy", rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8))
    np.save(d / "y.npy", rng.randint(0, 10, n).astype(np.int64))
    (d / "sweep_gpu.toml").write_text(GPU_TOML.format(out=d / "out", n=n, steps=steps, batch=batch))
    print(f"wrote {d}/sweep_gpu.toml; on a machine with K GPUs:\n"
          f"  torchrun --standalone --nproc_per_node K -m fastpurify sweep {d}/sweep_gpu.toml\n"
          f"  python benchmarks/bench_sweep.py --summarize {d}/out      # pairs/s per GPU (= images/s per method)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=24, help="digits images (CPU) / random images (GPU prep)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--gpu-prep", type=Path, default=None)
    p.add_argument("--gpu-steps", type=int, default=10, help="VP-SDE steps of the GPU config")
    p.add_argument("--gpu-batch", type=int, default=32)
    p.add_argument("--summarize", type=Path, default=None)
    a = p.parse_args(argv)
    if a.summarize:
        print(json.dumps(summarize(a.summarize), indent=2))
        return 0
    if a.gpu_prep:
        gpu_prep(a.gpu_prep, max(a.n, 256), a.gpu_steps, a.gpu_batch)
        return 0
    result = cpu(a.n)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"ratios": result["ratios"], **{k: {f: v[f] for f in (
        "wall_s", "pairs_per_s_wall", "pairs_per_s_compute", "records_io_s_per_record", "compute_s_per_record",
        "records_io_fraction")} for k, v in result["runs"].items()}}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
