"""Public API: `purify`, `Purifier`, `PurifiedClassifier` (docs/DESIGN.md, "The data path of one call")."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from . import ops
from .grad import GRAD_LABELS, StepCheckpoint, check_mode, straight_through
from .models.fast import describe_speed, fast_denoiser, speed_options
from .ops import FORWARD, derive_seeds
from .presets import Preset, Resolved, resolve
from .samplers import NoiseStreams, respaced_indices, sample_ddim, sample_ddpm, sample_vpsde, vpsde_grid
from .samplers.graphed import GraphPlan
from .schedules import get_vpsde_schedule
from .validate import check_images, check_seed

DEFAULT_PRESET = "diffpure"


def _as_diffusion(model):
    """Accept an EpsDiffusion, or an object carrying one as `.diffusion` (e.g. `fastpurify.zoo.digits()`)."""
    m = getattr(model, "diffusion", model)
    for attr in ("eps_at_index", "eps_at_time", "schedule", "image_size", "channels"):
        if not hasattr(m, attr):
            raise TypeError(f"model must be a fastpurify EpsDiffusion (or have one as .diffusion); "
                            f"{type(model).__name__} lacks {attr!r}")
    return m


class InferenceModule(nn.Module):
    """Purification is inference: a module of this kind and every network inside it stay in eval mode whatever a
    caller asks.  Attack libraries toggle train()/eval() (torchattacks calls model.train() after an attack on a
    module it found in train mode); dropout or batch-norm updates must never change a purification."""

    def __init__(self):
        super().__init__()
        self.training = False

    def train(self, mode: bool = True):
        if mode:
            warnings.warn(f"{type(self).__name__} stays in eval mode (purification is inference); train() ignored",
                          stacklevel=2)
        return super().train(False)

    def _ensure_eval(self) -> None:
        # A network handed to us may have been switched to train mode directly (net.train()): switch it back.
        if any(m.training for m in self.modules()):
            super().train(False)


class _CountingDenoiser:
    """Counts network evaluations (eps_at_index / eps_at_time) during one purification: reports carry the number
    of calls actually made, not the one a formula predicts."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def eps_at_index(self, u, i):
        self.calls += 1
        return self.model.eps_at_index(u, i)

    def eps_at_time(self, u, s):
        self.calls += 1
        return self.model.eps_at_time(u, s)

    def __getattr__(self, name):
        return getattr(self.model, name)


def per_sample_seeds(seed, batch: int, device: torch.device) -> torch.Tensor:
    """None → a fresh base from torch's global RNG (so EOT sees new noise every call); int → derived per index;
    (B,) tensor → used as given.  Returns int64 (B,) seeds on `device`."""
    seed = check_seed(seed, batch, device)
    if isinstance(seed, torch.Tensor):
        return seed
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return derive_seeds(seed, torch.arange(batch, device=device))


@runtime_checkable
class PurifierLike(Protocol):
    """The one interface of every purifier in the package — `Purifier`, `MultiRound`, `MethodPurifier`,
    `ResizePurifier` (a graphed plan runs inside `Purifier`) — and of any a user adds beside them:
    `forward(x, seed=None, *, round=0, grad=None, trace=None)` → images in [0, 1] (seed: per-sample seeds or None;
    round: the Philox round word; grad: the gradient mode for this call; trace: a list for intermediate states), and
    `first_round()` → the `Purifier` whose sampler runs first (its preset and schedule give the forward-diffusion
    noise level that attacks and reports read).  Code that needs the sampler asks `first_round()`; nothing unwraps a
    purifier by attribute."""

    def forward(self, x: torch.Tensor, seed=None, *, round: int = 0, grad: str | None = None,
                trace: list | None = None) -> torch.Tensor: ...

    def first_round(self) -> "Purifier": ...


@dataclass(frozen=True)
class PurifierSettings:
    """The scalar options of a `Purifier` (see its docstring for each), checked here, in one place, whether they
    arrive as keywords or as `Purifier(model, settings=PurifierSettings(...))`."""

    preset: str | Preset = DEFAULT_PRESET
    t_star: int | float | None = None
    steps: int | None = None
    backend: str | None = None
    grad: str = "full"
    fixed_noise_seed: int | None = None
    compile: bool | None = None
    precision: str | None = None
    channels_last: bool | None = None
    graphs: bool | str = False
    grad_memory: int | None = None

    def __post_init__(self):
        check_mode(self.grad)
        g = self.grad_memory
        if g is not None and (isinstance(g, bool) or not isinstance(g, int)):
            raise TypeError(f"grad_memory must be a number of bytes (int) or None, got {g!r}")
        if g is not None and g < 0:
            raise ValueError(f"grad_memory must be ≥ 0 bytes, got {g}")
        c = self.resolved()
        if self.grad == "adjoint" and c.preset.sampler != "vpsde":
            raise ValueError(f"grad='adjoint' is the continuous VP-SDE adjoint; preset {c.preset.name!r} uses the "
                             f"{c.preset.sampler!r} sampler: use grad='full' (exact, memory-bounded) instead")
        check_seed(self.fixed_noise_seed, 1, torch.device("cpu"))
        if isinstance(self.fixed_noise_seed, torch.Tensor):
            raise TypeError("fixed_noise_seed must be an int; pass per-sample seed tensors to forward(seed=...)")

    def resolved(self) -> Resolved:
        """The preset with t* and steps applied (`fastpurify.presets.resolve`)."""
        return resolve(self.preset, t_star=self.t_star, steps=self.steps)


SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(PurifierSettings))


class Purifier(InferenceModule):
    """Diffusion purification x ∈ [0, 1] → x_pur ∈ [0, 1] with a fixed model and resolved preset.

    Holds the model (weights frozen, always in eval mode: see InferenceModule), the schedule tables on the model's
    device (float32 whatever the module's dtype: `.double()` gives a float64 purifier for gradcheck-style use), and
    the resolved settings.  `last_nfe`: network evaluations counted in the last forward pass.
    `forward(x, seed=None)`: seed None = fresh noise per call (or `fixed_noise_seed` when set); int = per-index
    streams; (B,) tensor = per-sample seeds.

    grad: how gradients reach x when the input requires them (`fastpurify.grad`, docs/METHODS.md §9): 'full' (default;
    exact, per-step recompute), 'autograd' (exact, plain unrolled graph), 'adjoint' (VP-SDE presets only),
    'surrogate' (with `surrogate=`), 'bpda' (identity backward, weaker), 'none'.
    surrogate: the attack-side purifier for grad='surrogate': a Purifier, or a dict of settings (preset, t_star,
    steps, grad; t* defaults to the defence's) for one over the same model.  The defence value is returned, the
    surrogate's gradient used.
    fixed_noise_seed: an int makes every call without an explicit seed replay the same noise (deterministic
    white-box; per batch position, derive_seeds(seed, arange(B))).
    compile, precision ('fp32' | 'bf16' | 'fp16'), channels_last: how the denoiser runs in the loop
    (`fastpurify.models.fast`; None = the model's own defaults from load_diffusion, else off/fp32/off).
    grad_memory: bytes of step activations grad='full' may keep from the forward pass instead of recomputing those
    steps in the backward (exact either way; each kept step saves one network forward; unguided purifiers only).
    None: recompute every step (memory of one step).
    graphs: False | True | 'auto' | 'static': run through static buffers and replay a captured CUDA graph of the
    whole purification (and of its 'full'/'autograd' backward); True raises where capture is impossible, 'auto'
    falls back and records why, 'static' is the same path without capture (`fastpurify.samplers.graphed`).
    """

    def __init__(self, model=None, preset: str | Preset | None = None, *, guidance=None, surrogate=None,
                 settings: PurifierSettings | None = None, **options):
        """Purifier(model, preset, t_star=..., steps=..., ...) or Purifier(model, settings=PurifierSettings(...));
        preset and keyword options given with settings= replace those fields.  An unknown keyword is a TypeError."""
        super().__init__()
        unknown = sorted(set(options) - set(SETTINGS_FIELDS))
        if unknown:
            raise TypeError(f"Purifier() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
                            f"its settings are {', '.join(SETTINGS_FIELDS)} (plus guidance=, surrogate=, settings=)")
        if preset is not None:
            options["preset"] = preset
        settings = dataclasses.replace(settings or PurifierSettings(), **options)
        if model is None:
            from .zoo import digits

            model = digits()
        self.model = _as_diffusion(model).requires_grad_(False).eval()
        self.settings = settings
        self.last_nfe: int | None = None
        self.last_kept: dict | None = None
        self.config: Resolved = settings.resolved()
        self.backend = settings.backend
        # Guidance (AGDM, GDMP, …): an object whose bind(x_in, model, seeds, round, backend=) returns the per-step hook
        # guidance(u, eps, i) of the DDPM sampler.  Registered as a submodule when it is one (e.g. holds φ).
        c = self.config
        if guidance is not None and (c.preset.sampler != "ddpm" or c.steps not in (None, c.k)):
            raise ValueError(f"guidance needs the full-chain ddpm sampler; preset {c.preset.name!r} uses "
                             f"{c.preset.sampler!r} with {c.nfe} steps from t* = {c.k}")
        self.guidance = guidance
        self.grad = settings.grad
        self.grad_memory = settings.grad_memory or 0
        if (self.grad == "surrogate") != (surrogate is not None):
            raise ValueError("grad='surrogate' needs surrogate= (a Purifier or a dict of settings), and surrogate= "
                             "needs grad='surrogate'")
        if isinstance(surrogate, dict):
            # Settings not given are the defence's (its t* included, also when the surrogate names another preset).
            surrogate = Purifier(self.model, **{"preset": c.preset, "t_star": c.k, "backend": self.backend,
                                                **surrogate})
        if surrogate is not None and (not isinstance(surrogate, Purifier) or surrogate.grad == "surrogate"):
            raise TypeError("surrogate must be a Purifier (or a dict of its settings) whose own grad mode is not "
                            "'surrogate'")
        self.surrogate = surrogate
        self.fixed_noise_seed = settings.fixed_noise_seed
        abar = self.model.schedule.alphas_cumprod
        device = next(self.model.parameters()).device
        self.register_buffer("sqrt_abar", abar.sqrt().float().to(device), persistent=False)
        self.register_buffer("sqrt_1m_abar", (1 - abar).sqrt().float().to(device), persistent=False)
        # The denoiser the samplers drive: the model, or its compiled / autocast / channels_last FastDenoiser.
        self.speed = speed_options(self.model, settings.compile, settings.precision, settings.channels_last)
        self.denoiser = fast_denoiser(self.model, self.speed)
        self.graphs = GraphPlan(settings.graphs, device=device, guidance=guidance is not None, grad=self.grad)

    def extra_repr(self) -> str:
        c = self.config
        return f"preset={c.preset.name!r}, sampler={c.preset.sampler}, t*={c.k}/1000, nfe={c.nfe}, grad={self.grad!r}"

    def grad_config(self) -> dict:
        """What a report records about the attack gradient (docs/CONVENTIONS.md §2.3): mode, label, noise, configs."""
        d = {"grad_mode": self.grad, "grad_label": GRAD_LABELS[self.grad], "fixed_noise_seed": self.fixed_noise_seed,
             "defense": self.config.as_dict()}
        if self.surrogate is not None:
            d["surrogate"] = {**self.surrogate.config.as_dict(), "grad_mode": self.surrogate.grad}
        d["speed"] = describe_speed(self.speed, next(self.model.parameters()).device,
                                    getattr(self.denoiser, "compile_seconds", None))
        d["speed"]["graphs"] = self.graphs.describe()
        d["precision"] = self.speed.precision
        return d

    def first_round(self) -> "Purifier":
        return self

    def forward(self, x: torch.Tensor, seed=None, round: int = 0, grad: str | None = None,
                trace: list | None = None) -> torch.Tensor:
        """Purify x (B, C, H, W) in [0, 1].  round: the Philox round word (multi-round purification).
        grad: override the gradient mode for this call.  trace: a list that receives the intermediate images
        (u + 1)/2 after every sampler step, differentiable in the 'full' and 'autograd' modes (attack losses on
        intermediate states, DiffAttack-style); not available with the 'adjoint' mode."""
        m = self.model
        mode = self.grad if grad is None else check_mode(grad)
        x = check_images(x, channels=m.channels, size=m.image_size)
        param = next(m.parameters())
        if x.device != param.device:
            raise ValueError(f"x is on {x.device} but the diffusion model is on {param.device}")
        if param.dtype == torch.float16 and param.device.type == "cpu":
            raise TypeError("a float16 diffusion model cannot run on the CPU (no fp16 kernels for its convolutions); "
                            "use float32, float64 or bfloat16 on the CPU, or move the purifier to a GPU")
        self._ensure_eval()
        seeds = per_sample_seeds(self.fixed_noise_seed if seed is None else seed, x.shape[0], x.device)
        if mode == "adjoint" and self.config.preset.sampler != "vpsde":
            raise ValueError(f"grad='adjoint' is the continuous VP-SDE adjoint; preset {self.config.preset.name!r} "
                             f"uses the {self.config.preset.sampler!r} sampler")
        if trace is not None and mode not in ("full", "autograd"):
            raise ValueError(f"trace= needs grad='full' or 'autograd' (intermediate states of the graph); got {mode!r}")
        if not (torch.is_grad_enabled() and x.requires_grad) or mode == "autograd":
            return self._purify(x, seeds, round, "autograd", trace)
        if mode in ("full", "adjoint"):
            return self._purify(x, seeds, round, mode, trace)
        with torch.no_grad():
            value = self._purify(x, seeds, round, "autograd")
        if mode == "none":
            return value
        if mode == "bpda":
            return straight_through(value, x)
        if self.surrogate is None:
            raise ValueError("grad='surrogate' needs a Purifier built with surrogate=")
        return straight_through(value, self.surrogate(x, seed=seeds, round=round))

    def _purify(self, x: torch.Tensor, seeds: torch.Tensor, round: int, mode: str, trace: list | None = None
                ) -> torch.Tensor:
        """The data path; mode 'autograd' (plain graph, or none under no_grad), 'full' or 'adjoint'."""
        if self.graphs.enabled and not self.graphs.inside:  # static buffers / CUDA-graph replay (samplers.graphed)
            if trace is not None:
                raise ValueError("trace= is not available with graphs= (the intermediate states stay inside the "
                                 "static run); use graphs=False to trace")
            return self.graphs.run(self._purify, x, seeds, round, mode)
        m, cfg, p = self.model, self.config, self.config.preset
        # The samplers' view of m (compiled / autocast when asked), counting its calls; guidance sees m itself.
        den = _CountingDenoiser(self.denoiser)
        dtype, B = next(m.parameters()).dtype, x.shape[0]
        # Tables stay float32 (what the ops read), also after .double()/.half() converted the buffers.
        sqrt_abar, sqrt_1m_abar = self.sqrt_abar.float(), self.sqrt_1m_abar.float()
        # Forward diffusion to t*: ᾱ_{k−1} (canonical rule), noise stream FORWARD.
        u = (2.0 * x - 1.0).to(dtype)
        t = torch.full((B,), cfg.k - 1, device=x.device, dtype=torch.int64)
        u = ops.forward_diffuse(u, sqrt_abar, sqrt_1m_abar, t, seeds, purpose=FORWARD, round=round,
                                backend=self.backend)
        noise = NoiseStreams(seeds, tuple(u.shape), round=round, backend=self.backend)
        x_in = x.to(dtype)
        # 'full': the hook closes over a leaf copy of x_in, whose gradient each recomputed step hands back to x_in.
        ckpt = None
        if mode == "full":
            ckpt = StepCheckpoint(x_in if self.guidance is not None else None, keep_bytes=self.grad_memory,
                                  shared=[*m.parameters(), *m.buffers()] if self.grad_memory else ())
        hook = None
        if self.guidance is not None:
            hook = self.guidance.bind(x_in if ckpt is None else ckpt.leaf, m, seeds, round, backend=self.backend)
        # Reverse process.
        states = None if trace is None else []
        if p.sampler == "vpsde":
            dt = p.dt if cfg.steps is None else (cfg.s_star - p.s_end) / cfg.steps
            u = sample_vpsde(den, u, vpsde_grid(cfg.s_star, dt, p.s_end), noise=noise, sde=get_vpsde_schedule(),
                             backend=self.backend, checkpoint=ckpt, adjoint=mode == "adjoint", trace=states)
        elif p.sampler == "ddpm" and cfg.steps in (None, cfg.k):
            u = sample_ddpm(den, u, list(range(cfg.k - 1, -1, -1)), noise=noise, variance=p.variance, clip_x0=p.clip_x0,
                            guidance=hook, backend=self.backend, checkpoint=ckpt, trace=states)
        else:  # ddim, or ddpm respaced (= η 1 on the subsequence)
            eta = 1.0 if p.sampler == "ddpm" else p.eta
            idx = respaced_indices(cfg.k, cfg.steps, p.respacing)
            u = sample_ddim(den, u, idx, noise=noise, eta=eta, clip_x0=p.clip_x0, backend=self.backend, checkpoint=ckpt,
                            trace=states)
        self.last_nfe = den.calls
        if ckpt is not None and ckpt.keep_bytes:
            self.last_kept = {"steps": ckpt.kept_steps, "bytes": ckpt.kept_bytes}  # grad_memory's use, last call
        if trace is not None:
            trace.extend(((s + 1.0) / 2.0).to(x.dtype) for s in states)
        out = (u + 1.0) / 2.0
        if p.clamp_output:  # part of the defence (differentiated exactly), stated in reports
            out = out.clamp(0.0, 1.0)
        return out.to(x.dtype)


class PurifiedClassifier(InferenceModule):
    """classifier(purifier(x)) as one nn.Module returning logits (B, classes), for attack libraries (AutoAttack,
    torchattacks: they take the device from the first parameter and toggle eval()/train(); the wrapper and both
    networks stay in eval mode whatever they ask — see InferenceModule — and neither changes the noise).

    seed: None = fresh purification noise on every call (what EOT expects); an int = fixed noise (the same noise
    on every call for each batch position: a deterministic white-box evaluation); `forward(x, seed=...)` overrides
    it per call (per-sample seed tensors: what fastpurify.attacks passes).  freeze: the classifier's weights stop
    requiring grad, so attacks never build or accumulate parameter gradients.
    """

    def __init__(self, purifier: Purifier, classifier: nn.Module, seed=None, freeze: bool = True):
        super().__init__()
        self.purifier, self.classifier, self.seed = purifier, classifier, seed
        if freeze:
            classifier.requires_grad_(False)
        classifier.eval()

    def forward(self, x: torch.Tensor, seed=None) -> torch.Tensor:
        self._ensure_eval()
        return self.classifier(self.purifier(x, seed=self.seed if seed is None else seed))

    def describe(self) -> dict:
        """The record reports carry: the purifier's gradient config and the noise mode."""
        cfg = self.purifier.grad_config() if isinstance(self.purifier, Purifier) else {}
        return {**cfg, "noise": "fresh per call" if self.seed is None else f"fixed (seed {self.seed})"}


def _default_model_for(x):
    from .zoo.embedded import CHANNELS, IMAGE_SIZE, digits

    if isinstance(x, torch.Tensor) and x.dim() == 4 and tuple(x.shape[1:]) == (CHANNELS, IMAGE_SIZE, IMAGE_SIZE):
        return digits()
    shape = tuple(x.shape[1:]) if isinstance(x, torch.Tensor) and x.dim() == 4 else "?"
    raise ValueError(
        f"no model given and the input {shape} does not match the embedded digits model "
        f"({CHANNELS}, {IMAGE_SIZE}, {IMAGE_SIZE}); pass model=..., an EpsDiffusion wrapping your ε-network "
        "(fastpurify.models.EpsDiffusion(net, image_size=..., channels=...)).")


def purify(x: torch.Tensor, *, model=None, preset: str | Preset | None = None, t_star=None, steps: int | None = None,
           seed=None, backend: str | None = None, grad: str = "full", surrogate=None) -> torch.Tensor:
    """Purify images x (B, C, H, W) in [0, 1]; returns purified images in [0, 1].

    model: an EpsDiffusion (default: the embedded digits model when x is 1×16×16).  preset: a name from
    `fastpurify.presets.preset_names()` (default 'diffpure').  t_star: int steps of 1000 or float in (0, 1].
    steps: sampler steps (respacing).  seed: None (fresh noise), int, or (B,) per-sample seeds.
    backend: force an op backend ('torch', 'cpu', …); default automatic.
    grad: gradient mode when x requires grad ('full', 'autograd', 'adjoint', 'surrogate', 'bpda', 'none'; see
    `fastpurify.grad`); surrogate: settings of the attack-side purifier for grad='surrogate'.
    """
    model = _default_model_for(x) if model is None else model
    pur = Purifier(model, preset or DEFAULT_PRESET, t_star=t_star, steps=steps, backend=backend, grad=grad,
                   surrogate=surrogate)
    return pur(x, seed=seed)
