"""The first GPU hour in one prepared command: build, verify the kernels, measure, and bring everything back in one
folder (docs/GPU_CHECK.md).

    timeout 330 python benchmarks/gpu_check.py --out OUTDIR        # on the GPU machine: ≤ 5 min, build included
    python benchmarks/gpu_check.py --dry-run --out /tmp/dry          # every step at tiny sizes on the CPU
    python benchmarks/gpu_check.py --dry-run --out /tmp/dry --simulate-timeout all   # …each step killed mid-way

The plan (PLAN; printed with its budgets at the start), in order of value.  Each step runs in its own process group
(start_new_session) under a deadline: step i must end by start + the sum of the budgets of steps 1..i, so time a step
does not use flows on to the next ones and a slow step cannot eat the budget of those after it.  A step that runs
past its deadline is killed with its whole process group (os.killpg: compilers and workers included) and keeps its
partial results: every step appends its results to rows.jsonl one line at a time (flushed, fsynced) and streams its
output to gpu_check.log.
  build       fastpurify._C against this machine's torch, CUDA and compiler (`setup.py build_ext --inplace`, CUDA
              on, sm_80/sm_90 machine code + compute_90 PTX, MAX_JOBS = CPUs); skipped when a build with CUDA
              kernels is already there; without nvcc the report says so and only Triton can be verified
  optests     VERIFICATION: tests/test_gpu_ops.py -v -m gpu (every op × backend against the reference), streamed,
              each test under its own time limit, FASTPURIFY_AUTOTUNE=1 (one Triton config: one compile per kernel);
              a backend is recorded as verified when every test naming it and every backend-independent test passed
  roofline    device-to-device copy bandwidth (1 GiB) and dense matmul rates (fp32, tf32, bf16): the ceilings
  ops         benchmarks/bench_ops.py: every fused op at 256 MiB per tensor with CUDA events, cuda and triton against
              the torch reference, the σ = 0 step (target ≥ 85 % of copy) apart from the noisy one (against the
              noise's arithmetic bound), one JSON line per case; this step and the next ones autotune Triton over
              two configs (FASTPURIFY_AUTOTUNE=2)
  ncsnpp      benchmarks/gpu_purify.py --plan ncsnpp: NCSN++ CIFAR-10 (106.6 M), eager vs graphed, fp32 vs bf16,
              purify and the exact `full` gradient, our kernels (backend cuda/triton) beside the reference (torch)
  adm         the same on ADM-256 (552.8 M), small batches
  graphtests  tests/test_graphed.py -m gpu: capture and replay of whole purifications against eager (a separate,
              reported step: verification does not rest on it)
  compiled    NCSN++ with torch.compile (inductor) under its own budget, last: a slow compile eats nothing else
The output folder holds at most 8 files, all also in one archive at the end: gpu_check.json (the report: plan,
versions — Python, torch, CUDA, cuDNN, Triton, driver, GPU, nvcc, gcc —, each step's outcome, time and log tail,
test outcomes, verification, op and purification summaries), gpu_check.log, rows.jsonl, gpu_verified.json (the
verification record; FASTPURIFY_GPU_VERIFIED=path writes it there instead, e.g. for a read-only install) and
gpu_check.tar.gz.  SIGTERM (`timeout`) kills the running step's group and still writes the report and the archive.
The code is in gpu_check_steps/ beside this script: plan (budgets, deadlines), runner (process groups), build,
roofline, verify (test outcomes, the record), report (summaries, archive) and check (main and the steps in order).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder: _meta.py and gpu_check_steps/
from gpu_check_steps import check  # noqa: E402
from gpu_check_steps.build import internal_build, sass_counts, versions  # noqa: E402,F401
from gpu_check_steps.plan import (FILES, LEE_KIM, MAX_FILES, PEAKS, PLAN, REF, ROOT, STEPS,  # noqa: E402,F401
                                  TEST_TIMEOUT_S, Step, plan_text)
from gpu_check_steps.report import archive, summarize_ops, summarize_purify, summarize_tests  # noqa: E402,F401
from gpu_check_steps.roofline import internal_roofline  # noqa: E402,F401
from gpu_check_steps.runner import Runner, Terminated, _alive, kill_group, read_rows  # noqa: E402,F401
from gpu_check_steps.verify import (_record, merge_record, test_backends,  # noqa: E402,F401
                                    verified_backends)


def main(argv=None) -> int:
    return check.main(argv, description=__doc__, script=__file__)


if __name__ == "__main__":
    raise SystemExit(main())
