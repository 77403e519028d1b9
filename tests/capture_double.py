"""A CPU test double for CUDA-graph capture: `torch.cuda.graph` / `torch.cuda.CUDAGraph` that run on CPU tensors,
raise on what real capture forbids and a CPU can observe, and replay faithfully.

    from tests.capture_double import CaptureDouble
    with CaptureDouble() as cap:
        pur = Purifier(model, "ddpm", grad="full", graphs="static")
        cap.capture(pur)                     # what graphs=True does on a CUDA device: capture, then replay
        out = pur(x.requires_grad_(), seed=0)
        out.sum().backward()                 # the 'full' backward graph, captured then replayed

What it does while "capturing" (inside `with torch.cuda.graph(g)`), each a `CaptureViolation`:
  - torch.cuda.get_rng_state / set_rng_state (and the _all forms), torch.random.fork_rng over CUDA devices,
    torch.cuda.manual_seed / manual_seed_all / seed / seed_all / initial_seed, and the same on
    torch.cuda.default_generators[i] — PyTorch: "Cannot call CUDAGeneratorImpl::current_seed during CUDA graph
    capture" (torch.manual_seed reaches torch.cuda.manual_seed_all, so it is caught too);
  - torch.cuda.synchronize (and a stream's synchronize);
  - .item(), .tolist(), .numpy(), .cpu(), .to('cpu'), bool()/int()/float()/index() of a *device tensor*, and ops
    that read one and return a host value or a data-dependent shape (aten::_local_scalar_dense, nonzero,
    masked_select, unique, equal, is_nonzero): host syncs;
  - a nested capture.
Device tensors: everything is on the CPU here, so the double tracks which tensors would be on the GPU: those
registered with `on_device` (a module's parameters and buffers, or tensors) and every tensor an op recorded during
capture computes from one (taint).  Tensors made on the host (a coefficient table built from Python floats) stay
host tensors, as they would on a GPU.  A factory tensor made on the device from no device input (torch.arange(n,
device=...)) is not tracked: a miss, never a false alarm.

Pretending to be CUDA: code in the modules named by `pretend` (default: fastpurify.grad and
fastpurify.samplers.graphed, the RNG-state logic around the 'full' recompute and the capture) sees its CPU tensors'
`.device` as cuda:0, so the branches they take only on CUDA (saving the CUDA generator, forking it, checking for
capture) run here against the double: outside capture they get an emulated CUDA generator (a CPU torch.Generator),
during capture the violations above.  Everything else sees the real CPU device.

Capture and replay: the capture runs the region eagerly and records every aten op it dispatches (a
TorchDispatchMode), with its argument and output tensors kept alive like a graph's memory pool.  `replay()` re-runs
the recorded ops on those same tensors below autograd and copies each new result into the recorded output in place
(views and in-place results alias their inputs and need nothing), which is what a CUDA graph does: the same kernels
on the same addresses, fresh values from whatever was copied into the static inputs.  So replays equal eager runs
bit for bit, and a region that depends on Python values read at capture time shows it.
torch.compile: the recorder asks TorchDynamo to compile without it and to run the compiled artifact under it, so a
captured compiled network is recorded op by op with the aot_eager backend (its graphs run as aten ops); inductor's
generated kernels would not be seen.
Not simulated: kernels, streams and the caching allocator, host-to-device copies from pageable memory.
"""

from __future__ import annotations

import contextlib
import sys
import weakref
from collections import Counter

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

PRETEND = ("fastpurify.grad", "fastpurify.samplers.graphed")
# Ops that return a host value computed on the device or an output whose shape depends on device values.
HOST_SYNC_OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::equal", "aten::nonzero",
                 "aten::masked_select", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive"}
TENSOR_SYNCS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")
CUDA_RNG = ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all", "manual_seed",
            "manual_seed_all", "seed", "seed_all", "initial_seed")
_BASE_DEVICE = torch._C.TensorBase.device


class CaptureViolation(RuntimeError):
    """Something CUDA-graph capture forbids happened while the double was capturing."""


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


class _Recorder(TorchDispatchMode):
    """Records the ops of one capture; raises on host syncs of device tensors; propagates the device taint."""

    def __init__(self, double: "CaptureDouble", log: list):
        super().__init__()
        self.double, self.log = double, log

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        # TorchDynamo then compiles without this mode and runs the compiled artifact under it (aot_eager: its aten
        # ops are recorded); otherwise it refuses to run compiled code while a dispatch mode is active.
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        reads_device = any(self.double.is_device(t) for t in _tensors((args, kwargs)))
        name = func._schema.name
        if reads_device and name in HOST_SYNC_OPS:
            self.double.violate(f"{name} on a device tensor (a host sync: .item(), bool(), a data-dependent shape)")
        out = func(*args, **kwargs)
        if reads_device:
            if isinstance(out, (bool, int, float)):
                self.double.violate(f"{name} returned a host value computed from a device tensor (a host sync)")
            for t in _tensors(out):
                self.double.mark_device(t)
        self.log.append((func, args, kwargs, out))
        return out


class CaptureDouble:
    """Context manager: while active, torch.cuda's graph, stream and RNG entry points are the double's (see the
    module docstring).  Attributes: `captures` (graphs captured), `replays`, `emulated` (a Counter of CUDA RNG and
    sync calls served outside capture: they show the CUDA-only branches ran), `violations` (messages raised)."""

    def __init__(self, pretend=PRETEND):
        self.pretend = frozenset(pretend)
        self.capturing = False
        self.captures = self.replays = 0
        self.emulated: Counter = Counter()
        self.violations: list[str] = []
        self._device: dict[int, weakref.ref] = {}
        self._cuda_gen = torch.Generator().manual_seed(0x5EED)  # stands in for the CUDA generator
        self._saved: list = []

    # ---- device tensors
    def on_device(self, *objs) -> "CaptureDouble":
        """Register tensors (or every parameter and buffer of modules) as device tensors."""
        for obj in objs:
            if isinstance(obj, torch.nn.Module):
                self.on_device(*obj.parameters(), *obj.buffers())
            elif isinstance(obj, torch.Tensor):
                self.mark_device(obj)
            else:
                raise TypeError(f"on_device takes tensors and modules, got {type(obj).__name__}")
        return self

    def mark_device(self, t: torch.Tensor) -> None:
        self._device[id(t)] = weakref.ref(t)

    def is_device(self, t) -> bool:
        r = self._device.get(id(t)) if isinstance(t, torch.Tensor) else None
        return r is not None and r() is t

    def capture(self, purifier) -> "CaptureDouble":
        """Make a Purifier built with graphs='static' capture and replay as graphs=True does on a CUDA device, and
        register its networks and tables as device tensors."""
        plan = purifier.graphs
        if not plan.enabled:
            raise ValueError(f"the purifier's static-buffer path is off ({plan.reason}); build it with graphs='static'")
        plan.setting, plan.capture = True, True
        return self.on_device(purifier)

    # ---- what capture forbids
    def violate(self, what: str) -> None:
        msg = f"{what} during CUDA graph capture (forbidden; the capture double raised)"
        self.violations.append(msg)
        raise CaptureViolation(msg)

    def _guard(self, what: str) -> None:
        if self.capturing:
            self.violate(what)
        self.emulated[what] += 1

    # ---- install / remove
    def __enter__(self) -> "CaptureDouble":
        import torch.cuda.graphs
        import torch.cuda.random

        double = self
        cuda_ns = (torch.cuda, torch.cuda.random, torch.cuda.graphs)

        def patch(owner, name, value):
            had = name in vars(owner)
            self._saved.append((owner, name, vars(owner).get(name), had))
            setattr(owner, name, value)

        def rng_fn(name):
            def fn(*args, **kwargs):
                double._guard(f"torch.cuda.{name}")
                return double._rng_emulate(name, *args, **kwargs)
            fn.__name__ = name
            return fn

        for name in CUDA_RNG:
            for ns in cuda_ns:
                if hasattr(ns, name):
                    patch(ns, name, rng_fn(name))
        patch(torch.cuda, "default_generators", (_FakeGenerator(self),))
        patch(torch.random, "fork_rng", self._fork_rng)
        patch(torch.cuda, "synchronize", lambda device=None: self._guard("torch.cuda.synchronize"))
        patch(torch.cuda, "empty_cache", lambda: None)
        patch(torch.cuda, "Stream", lambda *a, **k: _FakeStream(self))
        patch(torch.cuda, "current_stream", lambda device=None: _FakeStream(self))
        patch(torch.cuda, "stream", lambda stream: contextlib.nullcontext(stream))
        for ns in (torch.cuda, torch.cuda.graphs):
            patch(ns, "graph_pool_handle", lambda: ("capture-double-pool", object()))
            patch(ns, "is_current_stream_capturing", lambda: self.capturing)
            patch(ns, "CUDAGraph", lambda *a, **k: FakeCUDAGraph(self))
            patch(ns, "graph", lambda cuda_graph, pool=None, stream=None, capture_error_mode="global":
                  _Capture(self, cuda_graph))

        def device(t):
            real = _BASE_DEVICE.__get__(t)
            if real.type == "cpu" and sys._getframe(1).f_globals.get("__name__") in double.pretend:
                return torch.device("cuda", 0)
            return real

        patch(torch.Tensor, "device", property(device))
        for name in TENSOR_SYNCS:
            patch(torch.Tensor, name, self._sync_method(name, getattr(torch.Tensor, name)))
        patch(torch.Tensor, "to", self._to_method(torch.Tensor.to))
        return self

    def __exit__(self, *exc) -> None:
        while self._saved:
            owner, name, value, had = self._saved.pop()
            if had:
                setattr(owner, name, value)
            else:
                delattr(owner, name)

    # ---- host syncs on tensors
    def _sync_method(self, name, original):
        double = self

        def method(t, *args, **kwargs):
            if double.capturing and double.is_device(t):
                double.violate(f"Tensor.{name}() of a device tensor (a host sync)")
            return original(t, *args, **kwargs)

        method.__name__ = name
        return method

    def _to_method(self, original):
        double = self

        def to(t, *args, **kwargs):
            if double.capturing and double.is_device(t):
                target = kwargs.get("device", args[0] if args else None)
                if isinstance(target, (str, torch.device)) and torch.device(target).type == "cpu":
                    double.violate("Tensor.to('cpu') of a device tensor (a host sync)")
            return original(t, *args, **kwargs)

        return to

    # ---- the emulated CUDA generator
    def _rng_emulate(self, name, *args, **kwargs):
        g = self._cuda_gen
        if name in ("get_rng_state",):
            return g.get_state()
        if name == "get_rng_state_all":
            return [g.get_state()]
        if name == "set_rng_state":
            g.set_state(kwargs.get("new_state", args[0] if args else None))
            return None
        if name == "set_rng_state_all":
            g.set_state(list(args[0])[0])
            return None
        if name in ("manual_seed", "manual_seed_all"):
            g.manual_seed(int(kwargs.get("seed", args[0])))
            return None
        if name in ("seed", "seed_all"):
            g.seed()
            return None
        return g.initial_seed()  # initial_seed

    @contextlib.contextmanager
    def _fork_rng(self, devices=None, enabled=True, _caller="fork_rng", _devices_kw="devices", device_type="cuda"):
        """torch.random.fork_rng: the CPU generator and (for CUDA devices, or devices=None) the emulated CUDA one."""
        cuda = device_type == "cuda" and (devices is None or len(list(devices)) > 0)
        if enabled and cuda:
            self._guard("torch.random.fork_rng over CUDA devices")
        if not enabled:
            yield
            return
        cpu_state = torch.get_rng_state()
        cuda_state = self._cuda_gen.get_state() if cuda else None
        try:
            yield
        finally:
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                self._cuda_gen.set_state(cuda_state)


class _FakeGenerator:
    """torch.cuda.default_generators[i] of the double."""

    def __init__(self, double: CaptureDouble):
        self.double = double

    def __getattr__(self, name):
        gen = self.double._cuda_gen
        attr = getattr(gen, name)
        if not callable(attr):
            return attr

        def method(*args, **kwargs):
            self.double._guard(f"torch.cuda.default_generators[0].{name}")
            return attr(*args, **kwargs)

        return method


class _FakeStream:
    def __init__(self, double: CaptureDouble):
        self.double = double

    def wait_stream(self, other) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def synchronize(self) -> None:
        self.double._guard("Stream.synchronize")

    def query(self) -> bool:
        return True


class FakeCUDAGraph:
    """torch.cuda.CUDAGraph of the double: the aten ops of its capture, replayed on the same tensors."""

    def __init__(self, double: CaptureDouble):
        self.double, self.log, self.replays = double, None, 0

    def capture_begin(self, pool=None, capture_error_mode="global") -> None:
        d = self.double
        if d.capturing:
            d.violate("a nested capture (torch.cuda.graph inside torch.cuda.graph)")
        self.log, d.capturing = [], True
        self._mode = _Recorder(d, self.log)
        self._mode.__enter__()

    def capture_end(self) -> None:
        self._mode.__exit__(None, None, None)
        self._mode, self.double.capturing = None, False
        self.double.captures += 1

    def replay(self) -> None:
        if self.log is None:
            raise RuntimeError("replay of a CUDA graph that was never captured (or was reset)")
        if self.double.capturing:
            self.double.violate("a graph replay")
        with torch.no_grad(), torch._C._AutoDispatchBelowADInplaceOrView():
            for func, args, kwargs, out in self.log:
                new = func(*args, **kwargs)
                inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs)) if t.numel()}
                for rec, val in zip(_tensors(out), _tensors(new)):
                    if rec is val or not rec.numel() or val.untyped_storage().data_ptr() in inputs:
                        continue  # in-place result or view: the recorded tensor already sees the new values
                    rec.copy_(val)
        self.replays += 1
        self.double.replays += 1

    def reset(self) -> None:
        self.log = None

    def pool(self):
        return ("capture-double-pool", id(self))


class _Capture:
    """`with torch.cuda.graph(g):` of the double."""

    def __init__(self, double: CaptureDouble, graph):
        if not isinstance(graph, FakeCUDAGraph):
            raise TypeError("the capture double captures into its own CUDAGraph (torch.cuda.CUDAGraph() while active)")
        self.double, self.graph = double, graph

    def __enter__(self):
        self.graph.capture_begin()
        return self

    def __exit__(self, *exc) -> None:
        self.graph.capture_end()
