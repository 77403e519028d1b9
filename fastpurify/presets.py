"""Named purification presets: frozen settings, resolved against overrides (t*, steps) into a `Resolved` config.

t* is given either as an int k ∈ {1..1000} ("k steps of 1000") or a float s* ∈ (0, 1] (k = round(1000·s*)).
Canonical rule (docs/METHODS.md §2): k steps means noising with ᾱ_{k−1}, then reverse steps from index k−1
(DDPM/DDIM) or from continuous time s* = k/1000 (VP-SDE).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

SAMPLERS = ("vpsde", "ddpm", "ddim")


@dataclass(frozen=True)
class Preset:
    name: str
    sampler: str                     # 'vpsde' | 'ddpm' | 'ddim'
    t_star: int | float              # k steps of 1000, or s*
    steps: int | None = None         # None: native (vpsde: dt grid; ddpm: all k steps; ddim: required)
    dt: float = 1e-3                 # VP-SDE Euler–Maruyama step (DiffPure: torchsde default 1e-3)
    s_end: float = 1e-5              # VP-SDE end time
    variance: str = "fixedsmall"     # DDPM: 'fixedsmall' | 'fixedlarge'
    clip_x0: bool = True             # clamp the Tweedie estimate to [−1, 1] (DDPM/DDIM)
    eta: float = 0.0                 # DDIM η (1 = ancestral on the subsequence)
    respacing: str = "uniform"       # index rule when steps < k: 'uniform' | 'lee_kim' | 'trailing'
    clamp_output: bool = True        # clamp the purified image to [0, 1]
    description: str = ""


_PRESETS: dict[str, Preset] = {}


def register_preset(p: Preset) -> Preset:
    if p.sampler not in SAMPLERS:
        raise ValueError(f"preset {p.name!r}: unknown sampler {p.sampler!r}")
    _PRESETS[p.name] = p
    return p


def preset_names() -> list[str]:
    return sorted(_PRESETS)


def get_preset(name: str) -> Preset:
    if not isinstance(name, str) or name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(preset_names())}")
    return _PRESETS[name]


def t_star_to_k(t_star) -> int:
    """int k ∈ [1, 1000] or float s* ∈ (0, 1] → k.  Anything else is a ValueError/TypeError naming the value."""
    if isinstance(t_star, bool) or not isinstance(t_star, (int, float)):
        raise TypeError(f"t_star must be an int (steps of 1000) or a float in (0, 1], got {t_star!r}")
    if isinstance(t_star, int):
        if not 1 <= t_star <= 1000:
            raise ValueError(f"t_star = {t_star} steps is outside [1, 1000]")
        return t_star
    if not 0.0 < t_star <= 1.0:
        raise ValueError(f"t_star = {t_star} is outside (0, 1]; give a float in (0, 1] or an int number of steps")
    k = round(1000 * t_star)
    if k < 1:
        raise ValueError(f"t_star = {t_star} rounds to 0 steps of 1000; the smallest is 0.001")
    return k


@dataclass(frozen=True)
class Resolved:
    """A preset with overrides applied and t* in both units; what reports record (docs/CONVENTIONS.md §2.4)."""

    preset: Preset
    k: int                 # t* in steps of 1000
    s_star: float          # t* in continuous time, k / 1000
    steps: int | None
    nfe: int               # network evaluations per purification

    def as_dict(self) -> dict:
        d = asdict(self.preset)
        d.update(preset=self.preset.name, t_star_steps=self.k, t_star_s=self.s_star, steps=self.steps, nfe=self.nfe,
                 description=self.describe())
        return d

    def describe(self) -> str:
        """One line from the settings that ran (never the preset's fixed text, which names its own t*)."""
        p = self.preset
        how = {"vpsde": f"VP-SDE Euler–Maruyama (dt {p.dt:g})", "ddpm": f"DDPM ancestral, {p.variance} variance",
               "ddim": f"DDIM η = {p.eta:g}"}.get(p.sampler, p.sampler)
        steps = "native grid" if self.steps is None else f"{self.steps} steps ({p.respacing})"
        return (f"{p.name}: {how}, t* = {self.k} steps of 1000 (s* = {self.s_star:g}), {steps}, "
                f"{self.nfe} network calls")


def resolve(preset: str | Preset, *, t_star=None, steps: int | None = None) -> Resolved:
    p = get_preset(preset) if isinstance(preset, str) else preset
    if t_star is not None:
        p = replace(p, t_star=t_star)
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise TypeError(f"steps must be an int >= 1, got {steps!r}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        p = replace(p, steps=steps)
    k = t_star_to_k(p.t_star)
    if p.sampler == "vpsde":
        from .schedules import vpsde_grid

        nfe = p.steps if p.steps is not None else len(vpsde_grid(k / 1000, p.dt, p.s_end)) - 1
    else:
        if p.sampler == "ddim" and p.steps is None:
            raise ValueError(f"preset {p.name!r}: the ddim sampler needs steps")
        if p.steps is not None and p.steps > k:
            raise ValueError(f"steps = {p.steps} exceeds t* = {k} steps of 1000")
        if p.steps is None:
            nfe = k
        else:  # the respacing rule decides how many indices there are (lee_kim can give more than `steps`)
            from .schedules import respaced_indices

            nfe = len(respaced_indices(k, p.steps, p.respacing))
    return Resolved(preset=p, k=k, s_star=k / 1000, steps=p.steps, nfe=nfe)


# ---- presets for the embedded digits model (t* chosen on the validation split; see zoo/weights/digits_card.json)
register_preset(Preset("diffpure", "vpsde", 0.1, description="DiffPure: VP-SDE Euler–Maruyama, dt 1e-3, t* = 0.1"))
register_preset(Preset("ddpm", "ddpm", 100, variance="fixedsmall", clip_x0=True,
                       description="DDPM ancestral, fixedsmall variance, clipped x̂₀, t* = 100 steps"))
register_preset(Preset("ddpm-fixedlarge", "ddpm", 100, variance="fixedlarge", clip_x0=True,
                       description="DDPM ancestral, fixedlarge variance (GDMP CIFAR-10 style), t* = 100 steps"))
register_preset(Preset("ddim", "ddim", 100, steps=10, eta=0.0, clip_x0=True,
                       description="DDIM η = 0, 10 uniformly respaced steps from t* = 100"))


# ---- DiffPure presets for the public checkpoints (docs/METHODS.md §4; models via fastpurify.load_diffusion) ----
# VP-SDE Euler–Maruyama with torchsde's dt 1e-3 down to 1e-5; DiffPure hands (u + 1)/2 to the classifier unclamped.
# ImageNet: the 224 → 256 → 224 bilinear resize is `fastpurify.methods.ResizePurifier` around the Purifier.
# Precision is a load option (load_diffusion(..., dtype='fp16') = DiffPure's use_fp16 ADM torso), not a preset field.
register_preset(Preset("diffpure-cifar10", "vpsde", 0.1, clamp_output=False,
                       description="DiffPure CIFAR-10 ℓ∞: NCSN++ checkpoint_8.pth, VP-SDE EM dt 1e-3, t* = 0.1"))
register_preset(Preset("diffpure-cifar10-l2", "vpsde", 0.075, clamp_output=False,
                       description="DiffPure CIFAR-10 ℓ2: NCSN++ checkpoint_8.pth, VP-SDE EM dt 1e-3, t* = 0.075"))
register_preset(Preset("diffpure-imagenet", "vpsde", 0.15, clamp_output=False,
                       description="DiffPure ImageNet ℓ∞: ADM 256x256_diffusion_uncond.pt (fp16 torso upstream), "
                                   "VP-SDE EM dt 1e-3, t* = 0.15, 224→256→224 bilinear resize"))

# CIFAR-100: no public DiffPure / AGDM checkpoint or setting exists for it, so these are the CIFAR-10 settings carried
# over unchanged (same 32×32 images, same ℓ∞ 8/255 threat model), for a 32×32 diffusion model trained on CIFAR-100
# (any load_diffusion kind; e.g. a DDPM `Model` or an ADM) — not values from a paper; tune t* on a validation split.
register_preset(Preset("diffpure-cifar100", "vpsde", 0.1, clamp_output=False,
                       description="DiffPure CIFAR-100 ℓ∞ (CIFAR-10's settings carried over): a 32×32 diffusion model "
                                   "trained on CIFAR-100, VP-SDE EM dt 1e-3, t* = 0.1"))
register_preset(Preset("cifar100-agdm", "ddpm", 70, variance="fixedlarge", clip_x0=True, clamp_output=True,
                       description="AGDM on a CIFAR-100 DDPM (CIFAR-10's settings carried over: fixedlarge, t* = 70); "
                                   "φ: an auxiliary network trained on CIFAR-100 (100 classes)"))

# ---- guided and multi-round methods (docs/METHODS.md §5, §6, §8) ----
# Sampler settings only: the guidance itself (AGDM's auxiliary network, GDMP's target) is built by
# fastpurify.methods.build_method / the guidance classes, which take these presets.
register_preset(Preset("agdm", "ddpm", 70, variance="fixedsmall", clip_x0=True,
                       description="AGDM reconstruction: DDPM ancestral from t* = 70 steps [paper: t = 70], "
                                   "adversarial guidance added to the posterior mean"))
register_preset(Preset("gdmp", "ddpm", 36, variance="fixedlarge", clip_x0=True,
                       description="GDMP round: DDPM ancestral, fixedlarge variance, 36 steps per round "
                                   "(CIFAR-10: 4 rounds, SSIM a=70000 or MSE a=60000)"))
register_preset(Preset("cifar10-agdm", "ddpm", 70, variance="fixedlarge", clip_x0=True, clamp_output=True,
                       description="AGDM on the CIFAR-10 DDPM (fixedlarge, the backbone's native variance), t* = 70"))
register_preset(Preset("cifar10-gdmp", "ddpm", 36, variance="fixedlarge", clip_x0=True, clamp_output=True,
                       description="GDMP CIFAR-10 round (use 4 rounds; SSIM a=70000 / MSE a=60000, ptb 8)"))
