"""Public API: `purify`, `Purifier`, `PurifiedClassifier` (DESIGN.md, "The data path of one call")."""

from __future__ import annotations

import torch
from torch import nn

from . import ops
from .presets import Preset, Resolved, resolve
from .reference.philox import FORWARD, derive_seeds
from .samplers import NoiseStreams, respaced_indices, sample_ddim, sample_ddpm, sample_vpsde, vpsde_grid
from .samplers.schedules import get_vpsde_schedule
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


def per_sample_seeds(seed, batch: int, device: torch.device) -> torch.Tensor:
    """None → a fresh base from torch's global RNG (so EOT sees new noise every call); int → derived per index;
    (B,) tensor → used as given.  Returns int64 (B,) seeds on `device`."""
    seed = check_seed(seed, batch, device)
    if isinstance(seed, torch.Tensor):
        return seed
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return derive_seeds(seed, torch.arange(batch, device=device))


class Purifier(nn.Module):
    """Diffusion purification x ∈ [0, 1] → x_pur ∈ [0, 1] with a fixed model and resolved preset.

    Holds the model (weights frozen), the schedule tables on the model's device, and the resolved settings.
    `forward(x, seed=None)`: seed None = fresh noise per call; int = per-index streams; (B,) tensor = per sample.
    """

    def __init__(self, model=None, preset: str | Preset = DEFAULT_PRESET, *, t_star=None, steps: int | None = None,
                 backend: str | None = None, guidance=None):
        super().__init__()
        if model is None:
            from .zoo import digits

            model = digits()
        self.model = _as_diffusion(model).requires_grad_(False)
        self.config: Resolved = resolve(preset, t_star=t_star, steps=steps)
        self.backend = backend
        # Guidance (AGDM, GDMP, …): an object whose bind(x_in, model, seeds, round) returns the per-step hook
        # guidance(u, eps, i) of the DDPM sampler.  Registered as a submodule when it is one (e.g. holds φ).
        c = self.config
        if guidance is not None and (c.preset.sampler != "ddpm" or c.steps not in (None, c.k)):
            raise ValueError(f"guidance needs the full-chain ddpm sampler; preset {c.preset.name!r} uses "
                             f"{c.preset.sampler!r} with {c.nfe} steps from t* = {c.k}")
        self.guidance = guidance
        abar = self.model.schedule.alphas_cumprod
        device = next(self.model.parameters()).device
        self.register_buffer("sqrt_abar", abar.sqrt().float().to(device), persistent=False)
        self.register_buffer("sqrt_1m_abar", (1 - abar).sqrt().float().to(device), persistent=False)

    def extra_repr(self) -> str:
        c = self.config
        return f"preset={c.preset.name!r}, sampler={c.preset.sampler}, t*={c.k}/1000, nfe={c.nfe}"

    def forward(self, x: torch.Tensor, seed=None, round: int = 0) -> torch.Tensor:
        """Purify x (B, C, H, W) in [0, 1].  round: the Philox round word (multi-round purification)."""
        m, cfg, p = self.model, self.config, self.config.preset
        x = check_images(x, channels=m.channels, size=m.image_size)
        param = next(m.parameters())
        if x.device != param.device:
            raise ValueError(f"x is on {x.device} but the diffusion model is on {param.device}")
        B = x.shape[0]
        seeds = per_sample_seeds(seed, B, x.device)
        # Forward diffusion to t*: ᾱ_{k−1} (canonical rule), noise stream FORWARD.
        u = (2.0 * x - 1.0).to(param.dtype)
        t = torch.full((B,), cfg.k - 1, device=x.device, dtype=torch.int64)
        u = ops.forward_diffuse(u, self.sqrt_abar, self.sqrt_1m_abar, t, seeds, purpose=FORWARD, round=round,
                                backend=self.backend)
        noise = NoiseStreams(seeds, tuple(u.shape), round=round, backend=self.backend)
        hook = None if self.guidance is None else self.guidance.bind(x.to(param.dtype), m, seeds, round)
        # Reverse process.
        if p.sampler == "vpsde":
            dt = p.dt if cfg.steps is None else (cfg.s_star - p.s_end) / cfg.steps
            u = sample_vpsde(m, u, vpsde_grid(cfg.s_star, dt, p.s_end), noise=noise, sde=get_vpsde_schedule(),
                             backend=self.backend)
        elif p.sampler == "ddpm" and cfg.steps in (None, cfg.k):
            u = sample_ddpm(m, u, list(range(cfg.k - 1, -1, -1)), noise=noise, variance=p.variance, clip_x0=p.clip_x0,
                            guidance=hook, backend=self.backend)
        else:  # ddim, or ddpm respaced (= η 1 on the subsequence)
            eta = 1.0 if p.sampler == "ddpm" else p.eta
            idx = respaced_indices(cfg.k, cfg.steps, p.respacing)
            u = sample_ddim(m, u, idx, noise=noise, eta=eta, clip_x0=p.clip_x0, backend=self.backend)
        out = (u + 1.0) / 2.0
        if p.clamp_output:
            out = out.clamp(0.0, 1.0)
        return out.to(x.dtype)


class PurifiedClassifier(nn.Module):
    """classifier(purifier(x)) as one nn.Module returning logits (B, classes), for attack libraries.

    Fresh purification noise on every call (what EOT expects) unless `seed` is set (fixed-noise evaluation).
    """

    def __init__(self, purifier: Purifier, classifier: nn.Module, seed=None):
        super().__init__()
        self.purifier, self.classifier, self.seed = purifier, classifier, seed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purifier(x, seed=self.seed))


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
           seed=None, backend: str | None = None) -> torch.Tensor:
    """Purify images x (B, C, H, W) in [0, 1]; returns purified images in [0, 1].

    model: an EpsDiffusion (default: the embedded digits model when x is 1×16×16).  preset: a name from
    `fastpurify.presets.preset_names()` (default 'diffpure').  t_star: int steps of 1000 or float in (0, 1].
    steps: sampler steps (respacing).  seed: None (fresh noise), int, or (B,) per-sample seeds.
    backend: force an op backend ('torch', 'cpu', …); default automatic.
    """
    model = _default_model_for(x) if model is None else model
    pur = Purifier(model, preset or DEFAULT_PRESET, t_star=t_star, steps=steps, backend=backend)
    return pur(x, seed=seed)
