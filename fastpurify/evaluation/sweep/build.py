"""The models and defences of a sweep: one `fastpurify.attacks.Defence` per configured method, and the attacks of
the ensemble that apply to it.

Methods are built by `fastpurify.evaluation.defences.build_defence` (baselines and `fastpurify.methods`, AGDM with
its auxiliary network and 'detach' variant); presets (diffpure, ddpm, ddim, diffpure-cifar10, …) by a Purifier with
the configured t* and steps.  Data whose size differs from the diffusion model's (ImageNet 224 vs ADM 256) is resized
around the purifier, bilinear up and back, inside autograd (DiffPure / Lee & Kim).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...api import Purifier
from ...attacks import AttackSpec, Defence
from ...methods import MethodPurifier, ResizePurifier, with_scale
from ..defences import build_defence as build_named_defence
from .config import BASELINES, GUIDED_OR_MULTI, ConfigError, MethodConfig, SweepConfig

_TORCH_DTYPES = {"fp32": torch.float32, "fp64": torch.float64, "fp16": torch.float32, "bf16": torch.float32}


@dataclass
class Models:
    diffusion: nn.Module
    classifier: nn.Module
    aux: nn.Module | None
    input_dtype: torch.dtype        # what the data is cast to (fp64 runs; fp16/bf16 are torso precisions inside)
    device: torch.device


def _embedded(module: nn.Module, dtype: torch.dtype, device: torch.device) -> nn.Module:
    # digits() / digits_aux() hand out their own copies, so casting and moving them in place is safe.
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_models(cfg: SweepConfig) -> Models:
    m, device = cfg.model, torch.device(cfg.device)
    dtype = _TORCH_DTYPES[cfg.dtype]
    if m.diffusion == "digits":
        from ...zoo import digits

        diffusion = _embedded(digits().diffusion, dtype, device)
    else:
        from ...models import load_diffusion

        diffusion = load_diffusion(m.diffusion, m.diffusion_kind or None, device=device,
                                   dtype=None if cfg.dtype == "fp32" else cfg.dtype)
    if m.classifier == "digits":
        from ...zoo import digits

        classifier = _embedded(digits().classifier, dtype, device)
    else:
        from ...models import load_classifier

        classifier = load_classifier(m.classifier, m.classifier_kind or None, normalize=m.normalize or None,
                                     device=device)
    aux = None
    if m.aux == "digits":
        from ...zoo import digits_aux

        aux = _embedded(digits_aux(), dtype, device)
    elif m.aux:
        from ...models import load_classifier

        aux = load_classifier(m.aux, device=device)
    return Models(diffusion, classifier.requires_grad_(False), aux, dtype, device)


def build_defence(mc: MethodConfig, models: Models, cfg: SweepConfig, image_size: int) -> Defence:
    backend = cfg.backend or None
    if mc.name in BASELINES or mc.name in GUIDED_OR_MULTI:
        settings = with_scale(mc.name, mc.scale) if mc.scale is not None else None
        d = build_named_defence(mc.name, models.diffusion, models.classifier, models.aux, settings=settings,
                                t_star=mc.t_star, backend=backend)
    else:  # a preset (diffpure, ddpm, ddim, diffpure-cifar10, …) with its t* and steps
        p = Purifier(models.diffusion, mc.name, t_star=mc.t_star, steps=mc.steps, backend=backend)
        d = Defence(mc.name, models.classifier, MethodPurifier(mc.name, p, {"config": p.config.as_dict(),
                                                                           "nfe": p.config.nfe}))
    d.name = mc.label
    if d.purifier is not None and image_size != models.diffusion.image_size:
        d.purifier = ResizePurifier(d.purifier, models.diffusion.image_size)
    return d


def t_star_of(defence: Defence) -> tuple[int | None, float | None]:
    """t* of the (first round of the) purifier, in steps of 1000 and in continuous time."""
    if defence.purifier is None:
        return None, None
    cfg = defence.purifier.describe().get("config", {})
    return cfg.get("t_star_steps"), cfg.get("t_star_s")


def applicable(spec: AttackSpec, defence: Defence) -> str | None:
    """None when the attack can run on this defence, else why not (it is then left out for this method)."""
    if spec.kind in ("aux", "joint") and defence.aux is None:
        return f"a {spec.kind!r} attack needs a defence with an auxiliary network"
    if spec.kind in ("per_step", "joint", "forward_only") and defence.purifier is None:
        return f"a {spec.kind!r} attack needs a purifier"
    if spec.variant is not None and spec.variant not in defence.variants:
        return f"the defence has no variant {spec.variant!r} (has: {sorted(defence.variants) or 'none'})"
    if spec.grad == "adjoint" and defence.purifier is not None:
        first = getattr(defence.purifier, "purifier", defence.purifier)
        inner = getattr(first, "inner", first)
        inner = inner.rounds[0] if hasattr(inner, "rounds") else inner
        if inner.config.preset.sampler != "vpsde":
            return "grad='adjoint' is the VP-SDE adjoint"
    return None


def attack_specs(cfg: SweepConfig) -> list[AttackSpec]:
    return [AttackSpec(a.name, kind=a.kind, loss=a.loss, steps=a.steps, eot=a.eot, step_size=a.step_size,
                       random_start=a.random_start, grad=a.grad, variant=a.variant or None, weight=a.weight,
                       kappa=a.kappa, states=a.states, cascade=a.cascade) for a in cfg.attacks]


def check_shapes(models: Models, sample: torch.Tensor, n_classes: int) -> None:
    """Data and models fit (channels, square images, classes): checked on one image before any work.  Another
    size than the diffusion model's is resized around the purifier (ResizePurifier)."""
    d = models.diffusion
    c, h, w = sample.shape[1:]
    if d.channels != c or h != w:
        raise ConfigError(f"data images are {c}×{h}×{w} but the diffusion model takes square {d.channels}-channel "
                          "images")
    with torch.no_grad():
        out = models.classifier(sample.to(models.device, models.input_dtype))
    if out.dim() != 2 or out.shape[1] < n_classes:
        raise ConfigError(f"the classifier returns {tuple(out.shape)} logits; the labels need ≥ {n_classes} classes")

