"""Static buffers and CUDA-graph capture of the whole purification (docs/DESIGN.md decision 5; `Purifier(graphs=...)`).

One `StaticRun` per call signature (shape, dtype, device, gradient mode, round) owns static input buffers (x, the
per-sample seeds), runs the purification on them and keeps its output (and, for an attack, its input gradient) in
static buffers too.  On a CUDA device the run is captured once and then replayed:
  - forward graph: 2x − 1, forward diffusion, every sampler step (UNet, fused step op), the output map;
  - backward graph (grad 'full' / 'autograd'): for 'full', every step's recompute and its VJP in reverse order.
The step index of every fused op is a view into a device arange and the noise is Philox of (seed, step) with the
seeds in the static buffer, so each replay draws fresh noise from the seeds copied in for that call — no host sync
and nothing re-captured.  Outputs and gradients are cloned out of the static buffers.

Capture needs a CUDA device, no guidance hook (it takes its own autograd step and may branch on values), no
VP-SDE adjoint (its reverse loop reads the coefficient table on the host) and a network that does not draw from
torch's random generator (checked on the eager warm-up runs: a replayed graph would give the forward pass and the
'full' recompute different draws).  `graphs=True` raises where any of these fails; `graphs='auto'` falls back to
eager and records why; `graphs='static'` runs the same static-buffer path without capture on any device (what CPU
CI checks bit for bit against eager).  CPU tests capture through a test double of torch.cuda.graph
(tests/capture_double.py) that raises on what capture forbids.

Memory: each captured signature holds a graph memory pool, and a run's closures refer back to the purifier (a
reference cycle), so a dropped purifier's graphs live until the garbage collector runs.  `GraphPlan.clear()` (or
`purifier.graphs.clear()`) frees them at once: call it between configurations (benchmarks/gpu_purify.py does).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

GRAPH_SETTINGS = (False, True, "auto", "static")
WARMUP = 2  # eager runs on a side stream before capture: compile, autotune, cuBLAS/cuDNN workspaces, lazy inits
MAX_RUNS = 8  # signatures kept (each holds its own graph memory pool); the oldest is dropped first


class CaptureRefused(RuntimeError):
    """The purification cannot be captured (found on the eager warm-up runs before capture)."""


def generator_states(device: torch.device) -> list[torch.Tensor]:
    """torch's generator states that a network could draw from on `device`: the CPU one, and the device's on CUDA
    (host-side reads; never call this while capturing)."""
    states = [torch.get_rng_state()]
    if device.type == "cuda":
        states.append(torch.cuda.get_rng_state(device))
    return states


def graph_obstacle(device: torch.device, guidance: bool, grad: str, capture: bool) -> str | None:
    """Why the purification cannot run as a captured (capture=True) or static-buffer graph here, or None."""
    if capture and device.type != "cuda":
        return f"CUDA-graph capture needs a CUDA device; the model is on {device.type} (graphs='static' runs the " \
               "same static-buffer path without capture)"
    if guidance:
        return "guidance hooks take their own autograd step inside every sampler step and may branch on values"
    if grad == "adjoint":
        return "grad='adjoint' reads its coefficient table on the host in the reverse loop; use grad='full'"
    return None


class StaticRun:
    """fn(x, seeds) → out on static buffers, replayed from a CUDA graph (capture=True) or re-run eagerly on them.

    training: the output is differentiable in x; `backward(g)` returns ∂⟨g, out⟩/∂x from static buffers.
    """

    def __init__(self, fn: Callable, x: torch.Tensor, seeds: torch.Tensor, *, training: bool, capture: bool):
        self.fn, self.training, self.capture = fn, training, capture
        self.x = torch.zeros_like(x).requires_grad_(training)  # the static input (a leaf when training)
        self.seeds = torch.zeros_like(seeds)
        self.generation = 0  # forward runs so far; a backward must belong to the latest one
        self.out = self.gout = self.gx = None
        if capture:
            with torch.no_grad():
                self.x.copy_(x)
                self.seeds.copy_(seeds)
            self._capture()

    def _run(self) -> torch.Tensor:
        with torch.set_grad_enabled(self.training):
            return self.fn(self.x, self.seeds)

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(WARMUP):
                if i == WARMUP - 1:  # the last warm-up is a steady-state run (compiling and autotuning are done)
                    before = generator_states(self.x.device)
                out = self._run()
                if self.training:
                    torch.autograd.grad(out, self.x, torch.ones_like(out))
        torch.cuda.current_stream().wait_stream(side)
        # Our noise is Philox of the seeds and never touches torch's generators; a network that does (a layer that
        # samples, dropout forced on) would draw different numbers in the captured forward and its 'full' recompute.
        after = generator_states(self.x.device)
        if any(not torch.equal(a, b) for a, b in zip(before, after)):
            raise CaptureRefused("the network draws from torch's random generator (a sampling layer, or dropout "
                                 "forced on): a captured graph cannot replay those draws in the 'full' recompute; "
                                 "use graphs=False (eager replays them exactly)")
        pool = torch.cuda.graph_pool_handle()
        self.forward_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.forward_graph, pool=pool):
            self.out = self._run()
        if self.training:
            self.gout = torch.zeros_like(self.out)
            self.backward_graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.backward_graph, pool=pool):
                # retain_graph: the autograd graph recorded at capture stays alive; replays refill its saved tensors.
                (self.gx,) = torch.autograd.grad(self.out, self.x, self.gout, retain_graph=True)

    def release(self) -> None:
        """Drop the graphs, the static buffers and the closure (which refers back to the purifier)."""
        for name in ("forward_graph", "backward_graph"):
            graph = self.__dict__.pop(name, None)
            if graph is not None:
                graph.reset()
        self.fn = self.out = self.gout = self.gx = None

    def forward(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Copy x and seeds in, run; returns the static output (clone it)."""
        with torch.no_grad():
            self.x.copy_(x)
            self.seeds.copy_(seeds)
        if self.capture:
            self.forward_graph.replay()
        else:
            self.out = self._run()
        self.generation += 1
        return self.out

    def backward(self, grad: torch.Tensor, generation: int) -> torch.Tensor:
        """∂⟨grad, out⟩/∂x for the forward run `generation`; returns the static gradient (clone it)."""
        if self.fn is None:
            raise RuntimeError("graphed purifier: its static runs were freed (graphs.clear()) before this backward")
        if generation != self.generation:
            raise RuntimeError("graphed purifier: another forward call with the same shape overwrote the static "
                               "buffers before this backward; take each gradient before the next call (or use "
                               "graphs=False)")
        if not self.capture:
            (gx,) = torch.autograd.grad(self.out, self.x, grad)
            return gx
        self.gout.copy_(grad)
        self.backward_graph.replay()
        return self.gx


class _StaticFunction(torch.autograd.Function):
    """x → StaticRun output, differentiable in x through the run's own (captured) backward."""

    @staticmethod
    def forward(ctx, x, run, seeds):
        ctx.run = run
        out = run.forward(x, seeds).clone()
        ctx.generation = run.generation
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        return ctx.run.backward(grad.contiguous(), ctx.generation).clone(), None, None


class GraphPlan:
    """What `Purifier(graphs=...)` decided, and the static runs it keeps.

    setting: False (eager), True (capture; raises where impossible), 'auto' (capture where possible, else eager
    with the reason recorded), 'static' (the static-buffer path without capture, any device).
    """

    def __init__(self, setting, *, device: torch.device, guidance: bool, grad: str):
        if setting not in GRAPH_SETTINGS or isinstance(setting, int) and not isinstance(setting, bool):
            raise ValueError(f"graphs must be one of {GRAPH_SETTINGS}, got {setting!r}")
        self.setting, self.capture = setting, setting in (True, "auto")
        why = None if setting is False else graph_obstacle(device, guidance, grad, self.capture)
        if why and setting in (True, "static"):
            raise ValueError(f"graphs={setting!r} is impossible here: {why}")
        self.enabled = setting is not False and why is None
        self.reason = "graphs=False" if setting is False else why  # why the eager path runs (None: it does not)
        self.runs: OrderedDict = OrderedDict()
        self.inside = False  # True while a static run executes the purification itself

    def describe(self) -> dict:
        return {"setting": self.setting, "active": self.enabled, "capture": self.enabled and self.capture,
                "reason": self.reason, "signatures": len(self.runs)}

    def clear(self) -> None:
        """Free every static run now (graphs, memory pools, buffers) instead of at the next garbage collection; the
        next call captures again."""
        for run in self.runs.values():
            run.release()
        self.runs.clear()

    def run(self, purify: Callable, x: torch.Tensor, seeds: torch.Tensor, round: int, mode: str) -> torch.Tensor:
        """purify(x, seeds, round, mode) through the static run of this call's signature."""
        training = torch.is_grad_enabled() and x.requires_grad
        if training and mode == "adjoint":
            why = graph_obstacle(x.device, False, mode, capture=False)
            if self.setting != "auto":
                raise RuntimeError(f"graphs={self.setting!r}: {why}")
            self.reason = why
            return self._eager(purify, x, seeds, round, mode)
        # Without a gradient every mode computes the same value: one run serves them all.
        mode = mode if training else "autograd"
        key = (tuple(x.shape), x.dtype, str(x.device), seeds.device.type, mode, training, round)
        run = self.runs.get(key)
        if run is None:
            def fn(xs, ss):
                self.inside = True
                try:
                    return purify(xs, ss, round, mode)
                finally:
                    self.inside = False

            try:
                run = StaticRun(fn, x.detach(), seeds, training=training, capture=self.capture)
            except CaptureRefused as e:
                if self.setting != "auto":
                    raise CaptureRefused(f"graphs={self.setting!r}: {e}") from None
                self.enabled, self.reason = False, str(e)  # 'auto': eager from now on, and why
                return self._eager(purify, x, seeds, round, mode)
            self.runs[key] = run
            if len(self.runs) > MAX_RUNS:
                self.runs.popitem(last=False)  # not released: a pending backward may still hold it
        self.runs.move_to_end(key)
        if training:
            return _StaticFunction.apply(x, run, seeds)
        return run.forward(x, seeds).clone()

    def _eager(self, purify, x, seeds, round, mode):
        self.inside = True
        try:
            return purify(x, seeds, round, mode)
        finally:
            self.inside = False
