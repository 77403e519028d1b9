"""The check itself: arguments, the output folder, then the plan's steps in order under their deadlines (a Check holds
the report and the cumulative budget), and the report and archive whatever happens."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import _meta  # benchmarks/ is on sys.path (gpu_check.py puts it there)

from .build import _probe_cuda_kernels, internal_build, versions
from .plan import FILES, MAX_FILES, PARTS, PLAN, STEPS, TEST_TIMEOUT_S, _left, _pythonpath, plan_text
from .report import _print_summary, archive, summarize_ops, summarize_purify, summarize_tests
from .roofline import internal_roofline
from .runner import Runner, Terminated, read_rows
from .verify import _TEMPS, _basetemp, _record, merge_record, verified_backends


def parse_args(argv, description: str) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=False, help="output folder (≤ 8 files; created, must hold no others)")
    ap.add_argument("--dry-run", action="store_true", help="every step at tiny sizes on the CPU (script check)")
    ap.add_argument("--skip", default="", help=f"comma list of steps to skip ({', '.join(STEPS)})")
    ap.add_argument("--budget", action="append", default=[], metavar="STEP=S", help="override a step's budget")
    ap.add_argument("--simulate-timeout", default="", metavar="STEPS",
                    help="comma list of steps (or 'all') that hang after their first result and are killed")
    ap.add_argument("--record-package", action="store_true",
                    help="also write the verification record into fastpurify/ops/gpu_verified.json")
    ap.add_argument("--merge-record", type=Path, metavar="FILE",
                    help="merge the records of FILE (an OUTDIR/gpu_verified.json brought back from a GPU) into "
                         "fastpurify/ops/gpu_verified.json, then exit: commit that file with the results")
    ap.add_argument("--internal", choices=("build", "roofline"), help=argparse.SUPPRESS)
    return ap, ap.parse_args(argv)


def plan_args(ap: argparse.ArgumentParser, args) -> tuple[set[str], set[str], dict[str, float]]:
    """--skip, --simulate-timeout and --budget checked against the plan: (skip, simulate, budgets)."""
    skip = set(filter(None, args.skip.split(",")))
    simulate = set(STEPS) if args.simulate_timeout == "all" else set(filter(None, args.simulate_timeout.split(",")))
    for name in skip | simulate:
        if name not in STEPS:
            ap.error(f"unknown step {name!r}; steps: {', '.join(STEPS)}")
    budgets = {s.name: (s.dry_s if args.dry_run else s.budget_s) for s in PLAN}
    for item in args.budget:
        name, _, value = item.partition("=")
        if name not in budgets:
            ap.error(f"--budget {item}: unknown step")
        budgets[name] = float(value)
    return skip, simulate, budgets


def prepare_out(ap: argparse.ArgumentParser, out: Path) -> None:
    """Create the output folder; refuse one with foreign files; clear the check's own files."""
    out.mkdir(parents=True, exist_ok=True)
    foreign = [f.name for f in out.iterdir() if f.name not in FILES + PARTS]
    if foreign:
        ap.error(f"{out} holds other files ({', '.join(foreign[:5])}): give an empty or new folder")
    for name in FILES + PARTS:
        (out / name).unlink(missing_ok=True)
    (out / "gpu_check.log").touch()


def main(argv=None, description: str | None = None, script: str | None = None) -> int:
    ap, args = parse_args(argv, description or "")
    if args.merge_record:
        print(json.dumps(merge_record(args.merge_record), indent=1))
        return 0
    if args.out is None:
        ap.error("--out DIR is required")
    if args.internal == "build":
        return internal_build(args.out / "rows.jsonl", args.dry_run)
    if args.internal == "roofline":
        return internal_roofline(args.out / "rows.jsonl", args.dry_run)
    skip, simulate, budgets = plan_args(ap, args)
    prepare_out(ap, args.out)
    return Check(args, skip, simulate, budgets, script or str(Path(__file__).resolve().parents[1] / "gpu_check.py")).run()


class Check:
    """One run of the plan: the report, the cumulative budget, and one method per step (in PLAN's order)."""

    def __init__(self, args, skip: set[str], simulate: set[str], budgets: dict[str, float], script: str):
        self.args, self.skip, self.simulate, self.budgets, self.script = args, skip, simulate, budgets, script
        self.out = out = args.out
        self.rows_path, self.log = out / "rows.jsonl", out / "gpu_check.log"
        self.record_path = Path(os.environ["FASTPURIFY_GPU_VERIFIED"]) if os.environ.get("FASTPURIFY_GPU_VERIFIED") \
            else out / "gpu_verified.json"
        self.t_start = time.perf_counter()
        import torch  # fastpurify itself is imported only by the steps (after the build)

        self.gpu = torch.cuda.is_available() and not args.dry_run
        self.report = {"dry_run": args.dry_run, "out": str(out), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "plan": [{"step": s.name, "budget_s": 0 if s.name in skip else budgets[s.name], "what": s.what}
                                for s in PLAN],
                       "plan_total_s": sum(budgets[s] for s in STEPS if s not in skip), "steps": {}, "errors": {}}
        self.base_env = {**os.environ, "PYTHONPATH": _pythonpath(), "PYTHONUNBUFFERED": "1"}
        if args.dry_run:  # tiny tensors on a CPU that may be shared: idle OpenMP workers would stall every op
            self.base_env["OMP_NUM_THREADS"] = "1"
        self.test_env = {"FASTPURIFY_AUTOTUNE": "1", "FASTPURIFY_TEST_TIMEOUT": str(TEST_TIMEOUT_S),
                         "FASTPURIFY_TEST_JSONL": str(self.rows_path)}
        # Benchmarks: two Triton configs (the usual best first): half the compiles of the full space, and the first
        # is already in Triton's cache from the op tests.  Recorded in every op row ("autotune").
        self.later_env = {"FASTPURIFY_GPU_VERIFIED": str(self.record_path), "FASTPURIFY_AUTOTUNE": "2"}
        self.py, self.dry = sys.executable, (["--dry-run"] if args.dry_run else [])
        self.elapsed_plan = 0.0  # the cumulative budget: step i must end by t_start + the sum of budgets 1..i
        self.matmul: dict = {}

    def start(self) -> None:
        """Header (plan and budgets), versions, the runner and the SIGTERM handler."""
        header = (f"gpu_check: {'GPU' if self.gpu else 'dry run on the CPU (tiny sizes; no GPU number)'} → "
                  f"{self.out}\nplan (budgets; a step ends by the cumulative time):\n"
                  f"{plan_text(self.budgets, self.skip)}")
        print(header, flush=True)
        with open(self.log, "a") as f:
            f.write(header + "\n")
        self.report["versions"] = versions(self.gpu)
        self.report["gpu"] = self.report["versions"].get("gpu")
        _meta.append_jsonl(self.rows_path, {"kind": "versions", **self.report["versions"]})
        self.runner = Runner(self.out, self.rows_path, self.log)

        def on_term(signum, frame):
            raise Terminated()

        signal.signal(signal.SIGTERM, on_term)

    def save(self) -> None:
        self.report["total_seconds"] = round(time.perf_counter() - self.t_start, 1)
        tmp = self.out / "gpu_check.json.part"
        tmp.write_text(json.dumps(self.report, indent=1, default=str))
        tmp.replace(self.out / "gpu_check.json")

    def section(self, name: str, fn):
        try:
            return fn()
        except Terminated:
            raise
        except Exception as e:  # noqa: BLE001 - every failure is recorded, none loses the report
            self.report["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            print(f"  {name}: ERROR {type(e).__name__}: {e}", flush=True)
            return None
        finally:
            self.save()

    def run_step(self, name: str, cmd: list, env: dict | None = None) -> dict | None:
        if name in self.skip:
            self.report["steps"][name] = {"skip_reason": "--skip"}
            return None
        self.elapsed_plan += self.budgets[name]
        limit = min(self.elapsed_plan, self.report["plan_total_s"]) - (time.perf_counter() - self.t_start)
        step_env = {**self.base_env, **(env or {})}
        if name in self.simulate:
            step_env["FASTPURIFY_HANG_AFTER"] = "1"
        print(f"  {name:10s} … (limit {limit:.0f} s)", flush=True)
        r = self.report["steps"][name] = self.runner.run(name, cmd, limit, step_env, simulate=name in self.simulate)
        self.save()
        state = "TIMED OUT (group killed, partial results kept)" if r["timed_out"] else f"rc={r['rc']}"
        print(f"  {name:10s} {state} in {r['seconds']} s", flush=True)
        return r

    def left(self, name: str) -> float:
        return _left(self.budgets, name, self.elapsed_plan, self.t_start)

    def run(self) -> int:
        self.start()
        interrupted = False
        try:
            cuda_kernels = self.step_build()
            self.step_optests(cuda_kernels)
            self.step_roofline()
            self.step_ops()
            for plan in ("ncsnpp", "adm"):
                self.step_purify(plan)
            self.step_graphtests()
            self.step_purify("compiled")
        except Terminated:
            interrupted = True
            self.report["errors"]["interrupted"] = "SIGTERM: the running step's process group was killed"
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish the report and the archive whatever comes now
            self.finish(interrupted)
        return 0 if self.report["ok"] else (124 if interrupted else 1)

    # 1. build
    def step_build(self) -> bool:
        r = self.run_step("build", [self.py, self.script, "--internal", "build", "--out", self.out, *self.dry])
        build = next((x for x in reversed(read_rows(self.rows_path)) if x.get("kind") == "build"), None)
        self.report["build"] = build and {k: v for k, v in build.items() if k != "info"}
        self.report["fastpurify_info"] = build and build.get("info")
        cuda_kernels = bool(build and build.get("cuda_kernels"))
        if r is None and not self.args.dry_run:  # --skip build: whatever is installed
            cuda_kernels = self.section("info", lambda: _probe_cuda_kernels(self.base_env)) or False
        return cuda_kernels

    def pytest_cmd(self, marks: list, files: list, workers: list = ()) -> list:
        return [self.py, "-m", "pytest", "-v", "-p", "_meta", "-p", "no:cacheprovider", _basetemp(), *workers,
                *marks, *files]

    # 2. op tests: the verification
    def step_optests(self, cuda_kernels: bool) -> None:
        gpu, report = self.gpu, self.report
        candidates = ((("cuda",) if cuda_kernels else ()) + ("triton",)) if gpu else ("cpu",)
        if gpu:
            files, marks = ["tests/test_gpu_ops.py"], ["-m", "gpu"]
        else:  # the GPU file (skipped here) and a CPU stand-in whose backends name 'cpu' and 'torch'
            files = ["tests/test_gpu_ops.py", "tests/test_ops_sampler_step.py"]
            marks = ["-m", "not slow", "-k", "not sampler_step or (realistic and True and ddim)"]
        workers = ["-n", "4"] if gpu and report["versions"].get("pytest_xdist") else []
        r = self.run_step("optests", self.pytest_cmd(marks, files, workers),
                          {**self.test_env, "FASTPURIFY_TEST_STEP": "optests",
                           "FASTPURIFY_GPU_EXPECT": ",".join(c for c in candidates if c != "cpu")})
        if r is None:
            return
        tests = [x for x in read_rows(self.rows_path) if x.get("kind") == "test" and x.get("step") == "optests"]
        report["optests"] = summarize_tests(tests)
        completed = not r["timed_out"] and r["rc"] in (0, 1)
        ok, why = verified_backends(tests, candidates, completed)
        report["verification"] = {"candidates": list(candidates), "verified": ok, "not_verified": why,
                                  "cuda_kernels_built": cuda_kernels}
        if ok:
            rec = self.section("gpu_verified",
                               lambda: _record(ok, gpu, self.record_path, self.args.record_package))
            report["verification"]["record"] = rec
            report["verification"]["record_path"] = str(self.record_path)
        self.save()

    # 3. roofline
    def step_roofline(self) -> None:
        self.run_step("roofline", [self.py, self.script, "--internal", "roofline", "--out", self.out, *self.dry])
        rows = read_rows(self.rows_path)
        copy = next((x for x in rows if x.get("kind") == "roofline" and x["what"] == "copy"), None)
        self.report["copy_gb_per_s"] = copy and round(copy["gb_per_s"], 1)
        self.matmul = {x["what"][7:]: x["flop_per_s"] for x in rows if x.get("kind") == "roofline" and
                       x["what"].startswith("matmul_")}
        self.report["matmul_flop_per_s"] = self.matmul

    # 4. ops (the script keeps a few seconds for its own start-up)
    def step_ops(self) -> None:
        lim = self.left("ops")
        clock = (self.report["versions"].get("nvidia_smi") or {}).get("max_sm_clock", "")
        clock_arg = ["--clock-mhz", clock.split()[0]] if clock and clock.split()[0].isdigit() else []
        self.run_step("ops", [self.py, "benchmarks/bench_ops.py", "--jsonl", self.rows_path, "--budget",
                              max(lim - 12, 3), *clock_arg, *self.dry], self.later_env)
        self.report["ops"] = self.section("ops_summary", lambda: summarize_ops(read_rows(self.rows_path)))

    # 5–6. purification matrices; 8. compiled, last
    def step_purify(self, plan: str) -> None:
        lim = self.left(plan)
        self.run_step(plan, [self.py, "benchmarks/gpu_purify.py", "--plan", plan, "--out", self.rows_path,
                             "--budget", max(lim - 15, 3), *self.dry], self.later_env)
        self.report["purify"] = self.section(
            "purify_summary", lambda: summarize_purify(read_rows(self.rows_path), self.report["gpu"], self.matmul))

    # 7. graph tests (reported apart; verification does not rest on them)
    def step_graphtests(self) -> None:
        if self.gpu:
            files, marks = ["tests/test_graphed.py"], ["-m", "gpu"]
        else:  # the GPU tests skip here; the capture double's CPU tests stand in
            files = ["tests/test_graphed.py", "tests/test_gpu_capture.py"]
            marks = ["-m", "not slow", "-k", "gpu or captured_purification_equals_eager"]
        r = self.run_step("graphtests", self.pytest_cmd(marks, files),
                          {**self.later_env, **self.test_env, "FASTPURIFY_TEST_STEP": "graphtests",
                           "FASTPURIFY_TEST_TIMEOUT": "90"})
        if r is not None:
            self.report["graphtests"] = summarize_tests([x for x in read_rows(self.rows_path) if
                                                         x.get("kind") == "test" and x.get("step") == "graphtests"])

    def finish(self, interrupted: bool) -> None:
        """ok, the report, the printed summary, the archive; the pytest temporary folders removed."""
        report, out = self.report, self.out
        ran = [s for s in report["steps"].values() if "rc" in s]
        report["ok"] = (not interrupted and all(s["rc"] == 0 and not s["timed_out"] for s in ran)
                        and not report["errors"])
        self.save()
        _print_summary(report, out)
        try:
            archive(out)
        except Exception as e:  # noqa: BLE001 - the files themselves are still in the folder
            print(f"gpu_check: archive failed: {type(e).__name__}: {e}", flush=True)
        for tmp in _TEMPS:
            shutil.rmtree(tmp, ignore_errors=True)
        files = sorted(f.name for f in out.iterdir())
        if len(files) > MAX_FILES:
            print(f"gpu_check: WARNING {len(files)} files in {out} (at most {MAX_FILES}): {files}", flush=True)
