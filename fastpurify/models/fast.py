"""The denoiser as the sampler loop runs it: compiled (`torch.compile`), under low-precision autocast, channels_last.

    den = fast_denoiser(model, SpeedOptions(compile=True, precision="bf16"))   # what Purifier(compile=..., ...) uses
    eps = den.eps_at_time(u, s)                                              # same interface as EpsDiffusion

What each option changes (and what it does not):
  - compile:       `torch.compile(dynamic=False, fullgraph=True)` of ε̂ = model(u, τ): static shapes, one graph per
                   (shape, dtype, device, grad mode), no graph breaks (a break raises).  The weights are graph inputs,
                   not constants, so a compiled denoiser always sees the current weights.  Module hooks (forward,
                   forward-pre, backward) on the network stop compilation: a hook would run inside the traced region,
                   where TorchDynamo recompiles whenever the hook's state changes (a hook that stores features
                   recompiles every call and fails after RECOMPILE_LIMIT calls) or, when added after the first call,
                   is silently left out; so every compiled call checks and raises a clear error instead (remove the
                   hooks, or use compile=False, which runs them as usual).  Only the network is
                   compiled: the fused step op costs < 1 % of a step on the CPU (benchmarks/bench_ops.py) and is captured with the
                   rest of the loop by CUDA graphs (samplers/graphed.py).
  - precision:     'fp32' (default), 'bf16', 'fp16': autocast around the network only, so its convolutions and
                   matmuls run in low precision while ε̂ comes back in the input dtype (fp32) and the schedule math,
                   the fused step update, the noise and the gradient accumulation stay fp32.  (`load_diffusion(dtype=)`
                   is different: it converts the torso weights, guided-diffusion's fp16 split.)
  - channels_last: NHWC input to the network (convolutions pick NHWC kernels); the weights are not touched.
The compiled callables are cached on the model (one per option set), so every Purifier over the same model shares
them and a second call with the same shape does not recompile; first-call (compile) time is recorded per signature,
apart from steady state.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Stated tolerances against the eager fp32 path, checked by tests/test_fast.py and reported by the benchmarks:
# (max |Δ| of the purified image in [0, 1], relative L2 error ‖g − g_fp32‖/‖g_fp32‖ of the attack's input gradient).
# compile: fused kernels only reorder fp32 sums (measured ≤ 3e-7 on the digits model).  bf16/fp16: measured 2.2e-3 and
# 5.4e-3 for bf16 on the digits model (100 steps); for scale, two seeds of the same purification differ by 0.33.
TOLERANCE = {"compile": (1e-4, 1e-4), "bf16": (1e-2, 5e-2), "fp16": (1e-2, 5e-2)}
COMPILE_BACKEND = "inductor"  # the tests' quick lane swaps in "aot_eager" (same tracing and autograd, no codegen)
# Inductor settings per device.  CPU: keep NCHW activations (no layout optimisation): inductor's channels-last
# GroupNorm/SiLU kernels, forward and backward, are slower than the eager NCHW ones, measured on NCSN++ at 1.8 M
# (batch 8, 1 thread): UNet forward + input gradient 1.29× eager without it, 1.11× with it.
INDUCTOR_OPTIONS = {"cpu": {"layout_optimization": False}}
RECOMPILE_LIMIT = 64  # graphs per compiled denoiser (shapes × dtypes × grad modes); beyond it dynamo raises
_CACHE_ATTR = "_fastpurify_fast_denoisers"


@dataclass(frozen=True)
class SpeedOptions:
    """How the denoiser runs: compile, precision ('fp32' | 'bf16' | 'fp16'), channels_last."""

    compile: bool = False
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self):
        for name in ("compile", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def is_default(self) -> bool:
        return self == SpeedOptions()


def speed_options(model, compile=None, precision=None, channels_last=None) -> SpeedOptions:
    """Explicit arguments win; None takes the model's own defaults (`load_diffusion(..., compile=True)` records them
    as `model.speed`), then SpeedOptions()."""
    base = getattr(model, "speed", None)
    base = base if isinstance(base, SpeedOptions) else SpeedOptions()
    return SpeedOptions(compile=base.compile if compile is None else compile,
                        precision=base.precision if precision is None else precision,
                        channels_last=base.channels_last if channels_last is None else channels_last)


# ---------------------------------------------------------------------------------------------- hardware support
@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def precision_support(precision: str, device: torch.device) -> str:
    """How `precision` runs on `device`: 'native' or 'emulated (why)'.  Raises ValueError where it cannot run."""
    if precision == "fp32":
        return "native"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if precision == "bf16" and major < 8:
            raise ValueError(f"precision='bf16' needs a GPU of compute capability ≥ 8.0; this one is "
                             f"{major}.{minor}: use 'fp16' or 'fp32'")
        return "native"
    if device.type == "cpu":
        flags = cpu_flags()
        if precision == "bf16":
            if {"avx512_bf16", "amx_bf16"} & flags:
                return "native"
            return ("emulated (this CPU has no avx512_bf16/amx_bf16: oneDNN converts in software, slower than fp32 — "
                    "see benchmarks/bench_purify.py)")
        if {"avx512_fp16", "amx_fp16"} & flags:
            return "native"
        raise ValueError("precision='fp16' on this CPU: it has no avx512_fp16/amx_fp16 (fp16 convolutions would run "
                         "through slow reference kernels); use 'fp32', or 'bf16' (emulated)")
    raise ValueError(f"precision={precision!r} is not supported on device type {device.type!r}")


# ---------------------------------------------------------------------------------------------- the denoiser
class _Evaluate(nn.Module):
    """ε̂ = model(u, τ) with the options applied; the unit torch.compile sees.  u: (B, C, H, W), τ: (B,) fp32."""

    def __init__(self, model: nn.Module, low: torch.dtype | None, channels_last: bool):
        super().__init__()
        self.model, self.low, self.channels_last = model, low, channels_last

    def forward(self, u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        x = u.contiguous(memory_format=torch.channels_last) if self.channels_last else u
        if self.low is None:
            eps = self.model(x, tau)
        else:
            # Autocast covers the network only: ε̂ leaves in u's dtype, so everything after it stays fp32.
            with torch.autocast(u.device.type, dtype=self.low, cache_enabled=False):  # graph-capture safe
                eps = self.model(x, tau)
        return eps.to(u.dtype).contiguous()


class FastDenoiser:
    """`model` (an EpsDiffusion) evaluated with SpeedOptions; what the samplers drive instead of the model.

    Not an nn.Module: it holds the model but never copies or registers its weights (a Purifier's state_dict and
    `.to()/.double()` only ever see the model).  Build it with `fast_denoiser` (cached per model and options).
    """

    def __init__(self, model, options: SpeedOptions):
        missing = [a for a in ("tau_at_index", "tau_at_time", "schedule", "image_size", "channels")
                   if not hasattr(model, a)]
        if missing or not isinstance(model, nn.Module):
            raise TypeError(f"compile/precision/channels_last need an EpsDiffusion (model(u, τ) with tau_at_index / "
                            f"tau_at_time); {type(model).__name__} lacks {missing or 'nn.Module'}")
        self.model, self.options = model, options
        self._call = _Evaluate(model, PRECISIONS[options.precision], options.channels_last)
        if options.compile:
            self._call = torch.compile(self._call, backend=COMPILE_BACKEND, dynamic=False, fullgraph=True)
        self._seen: set = set()
        self.compile_seconds: dict[str, float] = {}  # signature → first-call seconds (compile + one run)
        # Checked for hooks on every compiled call: the modules, and their hook dicts (registering a hook fills one).
        self._modules = list(model.modules()) if options.compile else []
        self._hook_dicts = [getattr(m, attr) for m in self._modules for attr, _ in _HOOK_KINDS if hasattr(m, attr)]

    # ---- what samplers and gradient modes read from a denoiser
    @property
    def schedule(self):
        return self.model.schedule

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @property
    def channels(self) -> int:
        return self.model.channels

    @property
    def time_input(self) -> str:
        return self.model.time_input

    def parameters(self, recurse: bool = True):
        return self.model.parameters(recurse)

    def eps_at_index(self, u: torch.Tensor, i: int) -> torch.Tensor:
        return self.eps(u, self.model.tau_at_index(i))

    def eps_at_time(self, u: torch.Tensor, s: float) -> torch.Tensor:
        return self.eps(u, self.model.tau_at_time(s))

    def eps(self, u: torch.Tensor, tau: float) -> torch.Tensor:
        """ε̂ at network time τ (a Python float, so the compiled graph takes it as a tensor and never recompiles)."""
        t = torch.full((u.shape[0],), tau, device=u.device, dtype=torch.float32)
        if not self.options.compile:
            return self._call(u, t)
        hooks = module_hooks(self._modules) if any(self._hook_dicts) or has_global_hooks() else None
        if hooks:
            raise RuntimeError(f"compile=True: hooks stop compilation, and the network carries module hooks "
                               f"({'; '.join(hooks[:4])}): inside the compiled region TorchDynamo would recompile "
                               f"whenever a hook's state changes (failing after {RECOMPILE_LIMIT} recompiles) or "
                               "leave out a hook added later; remove them (handle.remove()) or use compile=False")
        key = (tuple(u.shape), str(u.dtype).replace("torch.", ""), u.device.type,
               "grad" if torch.is_grad_enabled() and u.requires_grad else "no_grad")
        with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True), \
                torch._inductor.config.patch(INDUCTOR_OPTIONS.get(u.device.type, {})):
            if key in self._seen:
                return self._call(u, t)
            t0 = time.perf_counter()
            out = self._call(u, t)
            if u.device.type == "cuda":
                torch.cuda.synchronize(u.device)
            self.compile_seconds["x".join(map(str, key[0])) + " " + " ".join(key[1:])] = time.perf_counter() - t0
            self._seen.add(key)
            return out

    def describe(self, device: torch.device | None = None) -> dict:
        return describe_speed(self.options, device or next(self.model.parameters()).device, self.compile_seconds)


_HOOK_KINDS = (("_forward_hooks", "forward"), ("_forward_pre_hooks", "forward-pre"), ("_backward_hooks", "backward"),
               ("_backward_pre_hooks", "backward-pre"))
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def has_global_hooks() -> bool:
    """Hooks registered for every module (torch.nn.modules.module.register_module_forward_hook and the like)."""
    from torch.nn.modules import module as nn_module

    return any(getattr(nn_module, name, None) for name in _GLOBAL_HOOKS)


def module_hooks(modules) -> list[str]:
    """'<module class>: <n> <kind> hook(s)' for every module with hooks, and the global module hooks ([] if none)."""
    from torch.nn.modules import module as nn_module

    found = [f"{type(m).__name__}: {len(getattr(m, attr))} {kind} hook(s)" for m in modules
             for attr, kind in _HOOK_KINDS if getattr(m, attr, None)]
    found += [f"torch.nn.modules.module.{name}" for name in _GLOBAL_HOOKS if getattr(nn_module, name, None)]
    return found


def describe_speed(options: SpeedOptions, device: torch.device, compile_seconds: dict | None = None) -> dict:
    """What reports record: the options, how the precision runs here, and the compile times measured so far."""
    d = asdict(options)
    d["precision_support"] = precision_support(options.precision, device)
    if options.compile:
        d["compile_seconds"] = dict(compile_seconds or {})
    return d


class _Cache(dict):
    """Per-model cache of FastDenoisers; never copied with the model (compiled callables do not deepcopy)."""

    def __deepcopy__(self, memo):
        return _Cache()

    def __reduce__(self):
        return (_Cache, ())


def fast_denoiser(model, options: SpeedOptions):
    """The denoiser the samplers should drive: `model` itself for default options, else its cached FastDenoiser.
    Raises ValueError where the precision cannot run on the model's device."""
    if options.is_default:
        return model
    device = next(model.parameters()).device
    precision_support(options.precision, device)
    cache = model.__dict__.get(_CACHE_ATTR)
    if cache is None:
        cache = model.__dict__[_CACHE_ATTR] = _Cache()
    if options not in cache:
        cache[options] = FastDenoiser(model, options)
    return cache[options]
