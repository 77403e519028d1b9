"""Every instruction-set path of the C++ CPU kernels (csrc/cpu/isa.h): the Philox noise and the element-wise loops run
on the widest of baseline / avx2 / avx512 the CPU has, capped by FASTPURIFY_CPU_ISA, read once per process.  So each
path runs in its own subprocess (`python -m tests.test_cpu_isa OUT`, all started at once) and computes every case
below on the `cpu` backend; this process computes the same cases on `backend="torch"` (the reference).  Each path must
match the reference within the op tests' tolerances (tests/op_checks.py, tests/test_philox.py) and give the same bits
as every other path: the loops round once per operation in the reference's order, without FMA contraction, and the
noise is branch-free float32 code, so the instruction set changes the speed only.

A path this CPU does not have is still asked for, never skipped: the cap is then clamped to the widest path the CPU
has, which the test asserts (the widest is read from /proc/cpuinfo where there is one; elsewhere from the avx512 run),
and the clamped run is checked like the others.
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastpurify import ops
from fastpurify.ops import _ext
from fastpurify.ops.reference.philox import derive_seeds
from tests import op_checks as C
from tests.utils import assert_close_verbose

ROOT = Path(__file__).resolve().parents[1]
PATHS = ("baseline", "avx2", "avx512")  # narrowest first, as FASTPURIFY_CPU_ISA names them

DTYPES = {"f32": torch.float32, "f64": torch.float64}
# Per-sample sizes 105 (below and between the 8/16-lane vectors: tails everywhere) and 3219 (two 2048-element tiles).
SHAPES = [(3, 3, 7, 5), (2, 3, 37, 29)]
# (family, row, K): noise and guidance; no noise (σ = 0) but guidance (s_g ≠ 0); noise alone; neither.
STEPS = [("ddpm-fixedsmall", "mid", 2), ("ddpm-fixedlarge", "last", 2), ("ddim", "mid", 0), ("ddim", "last", 0)]
NOISE_N = 2053  # across the noise's 32-word blocks and 256-word chunks, with tails


def results(backend: str) -> dict[str, torch.Tensor]:
    """{case: tensor} for every checked output and gradient of forward_diffuse, sampler_step, guidance_accumulate,
    normal and philox_bits on `backend`, float32 and float64, clip on and off."""
    out = {}
    for dn, dtype in DTYPES.items():
        for shape in SHAPES:
            w = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
            x0, a, s, t, seeds = C.diffuse_inputs(shape, dtype)
            x0.requires_grad_(True)
            y = ops.forward_diffuse(x0, a, s, t, seeds, step=2, purpose=0, round=1, backend=backend)
            name = f"forward_diffuse {dn} {list(shape)}"
            out[name] = y.detach()
            out[f"{name} ∂x0"] = torch.autograd.grad((y * w).sum(), x0)[0]
        shape = SHAPES[0]
        w = torch.randn(shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(dtype)
        for family, where, K in STEPS:
            for clip in (False, True):
                x, eps, g, gw, coef, k, seeds = C.step_inputs(shape, K, family, where, dtype=dtype)
                leaves = {n: v.requires_grad_(True) for n, v in (("x", x), ("eps", eps), ("g", g), ("gw", gw))
                          if v is not None}
                y = ops.sampler_step(x, eps, coef, k, seeds, g, gw, clip=clip, backend=backend)
                name = f"sampler_step {dn} {family}/{where} K={K} clip={clip}"
                out[name] = y.detach()
                grads = torch.autograd.grad((y * w).sum(), list(leaves.values()))
                out.update({f"{name} ∂{n}": v for n, v in zip(leaves, grads)})
        g, gw = C.guidance_inputs(3, shape, dtype=dtype)
        g.requires_grad_(True)
        gw.requires_grad_(True)
        y = ops.guidance_accumulate(g, gw, backend=backend)
        out[f"guidance_accumulate {dn}"] = y.detach()
        out[f"guidance_accumulate {dn} ∂g"], out[f"guidance_accumulate {dn} ∂gw"] = \
            torch.autograd.grad((y * w).sum(), (g, gw))
    seeds = derive_seeds(5, torch.arange(3)) - (1 << 62)
    out["normal"] = ops.normal(seeds, (3, NOISE_N), step=4, purpose=1, round=2, backend=backend)
    out["philox_bits r0"], out["philox_bits r1"] = ops.philox_bits(seeds, NOISE_N, step=4, purpose=1, round=2,
                                                                  backend=backend)
    return out


def tolerance(name: str) -> tuple[float, float]:
    """(atol, rtol) of a case against the reference: those of the op tests."""
    if name.startswith("philox_bits"):
        return 0.0, 0.0  # the words are bit-identical (tests/test_philox.py)
    if name == "normal":
        return 2e-6, 2e-6  # Box–Muller's log/cos differ by a few ulps (tests/test_philox.py)
    if name.endswith("∂gw"):  # a sum over a sample's elements: atol scaled by √length (tests/op_checks.py)
        return C.ATOL * math.prod(SHAPES[0][1:]) ** 0.5, C.RTOL
    return C.ATOL, C.RTOL


def widest_on_this_cpu() -> str | None:
    """The widest path this CPU runs, from the kernel's CPU flags (not from the extension); None where unknown."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "baseline"  # the AVX paths exist on x86-64 only
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), None)
    if flags is None:
        return None
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "baseline"


_UNKNOWN_PROBE = """
import torch
from fastpurify import ops
from fastpurify.ops import _ext
from tests import op_checks as C
assert _ext.load_error() is None
x0, a, s, t, seeds = C.diffuse_inputs((2, 5))
x, eps, _, _, coef, k, sd = C.step_inputs((2, 5), 0, "ddim", "mid")
for name, call in [("cpu_isa", torch.ops.fastpurify.cpu_isa),
                   ("forward_diffuse", lambda: ops.forward_diffuse(x0, a, s, t, seeds, backend="cpu")),
                   ("sampler_step", lambda: ops.sampler_step(x, eps, coef, k, sd, clip=True, backend="cpu"))]:
    try:
        call()
        print(name, "ran")
    except ValueError as e:
        print(name, "ValueError:", e)
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{requested path: {'isa': path used, 'results': results('cpu')}} and the output of a run with an unknown
    FASTPURIFY_CPU_ISA, all started at once (a few seconds each, mostly importing torch)."""
    tmp = tmp_path_factory.mktemp("cpu_isa")

    def start(isa, args):
        env = {**os.environ, "FASTPURIFY_CPU_ISA": isa, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    procs = {isa: start(isa, ["-m", "tests.test_cpu_isa", str(tmp / f"{isa}.pt")]) for isa in PATHS}
    unknown = start("avx3", ["-c", _UNKNOWN_PROBE])
    out = {}
    for isa, p in [*procs.items(), ("avx3", unknown)]:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, f"FASTPURIFY_CPU_ISA={isa} run failed:\n{stderr[-3000:]}"
        out[isa] = stdout if isa == "avx3" else torch.load(tmp / f"{isa}.pt", weights_only=True)
    return out


@pytest.mark.skipif(_ext.load_error() is not None, reason="fastpurify._C not built")
def test_every_path_matches_the_reference_and_the_other_paths(runs):
    widest = widest_on_this_cpu() or runs["avx512"]["isa"]
    used = {isa: runs[isa]["isa"] for isa in PATHS}
    # Asked for a path the CPU lacks, the kernels run the widest it has (clamped, so the run is still checked).
    expected = {isa: PATHS[min(PATHS.index(isa), PATHS.index(widest))] for isa in PATHS}
    assert used == expected, f"FASTPURIFY_CPU_ISA → cpu_isa(): {used}, expected {expected} on a CPU up to {widest}"
    ref = results("torch")
    for isa in PATHS:
        got = runs[isa]["results"]
        assert got.keys() == ref.keys()
        for name, r in ref.items():
            assert got[name].dtype == r.dtype and got[name].shape == r.shape, name
            atol, rtol = tolerance(name)
            assert_close_verbose(got[name], r, atol, rtol, f"{name} [{used[isa]}] vs torch")
    top = runs[PATHS[-1]]["results"]
    for isa in PATHS[:-1]:
        differ = [name for name, v in runs[isa]["results"].items() if not torch.equal(v, top[name])]
        assert not differ, f"{used[isa]} and {used[PATHS[-1]]} differ in {len(differ)} cases: {differ[:5]}"


@pytest.mark.skipif(_ext.load_error() is not None, reason="fastpurify._C not built")
def test_unknown_isa_is_an_error(runs):
    """FASTPURIFY_CPU_ISA=avx3 is refused by every kernel (and cpu_isa()), never ignored."""
    lines = runs["avx3"].strip().splitlines()
    assert [line.split()[0] for line in lines] == ["cpu_isa", "forward_diffuse", "sampler_step"], lines
    for line in lines:
        assert "ValueError: FASTPURIFY_CPU_ISA=avx3: expected baseline, avx2 or avx512" in line, line


if __name__ == "__main__":
    # One path's run (FASTPURIFY_CPU_ISA set by the fixture `runs`): the C++ kernels' results, and the path used.
    assert _ext.load_error() is None, _ext.load_error()
    torch.save({"isa": torch.ops.fastpurify.cpu_isa(), "results": results("cpu")}, sys.argv[1])
