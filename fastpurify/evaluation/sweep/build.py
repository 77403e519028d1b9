"""The models and defences of a sweep: one `fastpurify.attacks.Defence` per configured method, and the attacks of
the ensemble that apply to it.

Methods are built by `fastpurify.evaluation.defences.build_defence` (baselines and `fastpurify.methods`, AGDM with
its auxiliary network and 'detach' variant); presets (diffpure, ddpm, ddim, diffpure-cifar10, …) by a Purifier with
the configured t* and steps.  Data smaller than the diffusion model (ImageNet 224 vs ADM 256) is resized around the
purifier (and its attack-side variants), bilinear up and back, inside autograd (DiffPure / Lee & Kim); data larger
than the model only when the config asks for it (model.allow_downsample).
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass

import torch
from torch import nn

from ...api import Purifier
from ...attacks import AttackSpec, Defence
from ...attacks.adaptive import objective_for
from ...methods import MethodPurifier, ResizePurifier, with_scale
from ..defences import build_defence as build_named_defence
from .config import BASELINES, GUIDED_OR_MULTI, ConfigError, MethodConfig, ModelConfig, SweepConfig

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


def _load(what: str, fn, problems: list[str]):
    """Run one loader; a failure becomes one line naming the config key (no traceback)."""
    from ...models.loaders import CheckpointError

    try:
        return fn()
    except (CheckpointError, ConfigError, OSError, TypeError, ValueError, RuntimeError) as e:
        problems.append(f"model.{what}: " + " ".join(str(e).split()))
    except (KeyError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as e:  # torch.load on a non-checkpoint
        problems.append(f"model.{what}: not a PyTorch checkpoint or safetensors file ({type(e).__name__}: {e})")
    return None


def _diffusion(m, cfg: SweepConfig, device, dtype):
    if m.diffusion == "digits":
        from ...zoo import digits

        return _embedded(digits().diffusion, dtype, device)
    import warnings

    from ...models import load_diffusion

    with warnings.catch_warnings():  # what the loader assumed becomes a problem line (load_models), not a warning
        warnings.simplefilter("ignore", UserWarning)
        return load_diffusion(m.diffusion, m.diffusion_kind or None, device=device,
                              dtype=None if cfg.dtype == "fp32" else cfg.dtype, **m.diffusion_config)


def _classifier(path: str, kind: str, m, device, dtype, config: dict):
    if path == "digits":
        from ...zoo import digits

        return _embedded(digits().classifier, dtype, device)
    from ...models import load_classifier

    return load_classifier(path, kind or None, normalize=m.normalize or None, device=device, **config)


def load_models(cfg: SweepConfig, problems: list[str], notes: list[str]) -> Models | None:
    """Load the diffusion model, the classifier and the auxiliary network; each failure is one line in problems.
    A setting a loader had to assume (an ADM's head width) is a problem unless given in [model.diffusion_config]."""
    m, device = cfg.model, torch.device(cfg.device)
    dtype = _TORCH_DTYPES[cfg.dtype]
    diffusion = _load("diffusion", lambda: _diffusion(m, cfg, device, dtype), problems)
    classifier = _load("classifier", lambda: _classifier(m.classifier, m.classifier_kind, m, device, dtype,
                                                         m.classifier_config), problems)
    aux = None
    if m.aux == "digits":
        from ...zoo import digits_aux

        aux = _embedded(digits_aux(), dtype, device)
    elif m.aux:
        aux = _load("aux", lambda: _classifier(m.aux, "", ModelConfig(), device, dtype, {}), problems)
    for key, why in (getattr(diffusion, "meta", None) or {}).get("assumed", {}).items():
        problems.append(f"model.diffusion: {key} is not in the checkpoint ({why}); give it in [model.diffusion_config]"
                        f" ({key} = {diffusion.meta['config'][key]!r} if that is what the model was trained with)")
    if diffusion is None or classifier is None or (m.aux and aux is None):
        return None
    for name, net in (("diffusion", diffusion), ("classifier", classifier), ("aux", aux)):
        meta = getattr(net, "meta", None)
        if meta and meta.get("kind"):
            notes.append(f"model.{name}: {meta['kind']} {meta.get('config', {})}")
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
        # the attack-side variants purify the same images as the defence, so they are resized the same way
        d.purifier = ResizePurifier(d.purifier, models.diffusion.image_size)
        d.variants = {k: ResizePurifier(v, models.diffusion.image_size) for k, v in d.variants.items()}
    return d


def t_star_of(defence: Defence) -> tuple[int | None, float | None]:
    """t* of the (first round of the) purifier, in steps of 1000 and in continuous time."""
    if defence.purifier is None:
        return None, None
    cfg = defence.purifier.describe().get("config", {})
    return cfg.get("t_star_steps"), cfg.get("t_star_s")


def applicable(spec: AttackSpec, defence: Defence) -> str | None:
    """None when the attack can run on this defence, else why not (it is then left out for this method): the
    attack's own objective refuses a defence without the parts it needs; variants and the adjoint are checked here."""
    try:
        objective_for(defence, spec)
    except ValueError as e:
        return str(e)
    if spec.variant is not None and spec.variant not in defence.variants:
        return f"the defence has no variant {spec.variant!r} (has: {sorted(defence.variants) or 'none'})"
    if (spec.grad == "adjoint" and defence.purifier is not None
            and defence.purifier.first_round().config.preset.sampler != "vpsde"):
        return "grad='adjoint' is the VP-SDE adjoint"
    return None


def attack_specs(cfg: SweepConfig) -> list[AttackSpec]:
    return [a.to_spec() for a in cfg.attacks]


def check_fit(models: Models, sample: torch.Tensor, data, ids, labels, cfg: SweepConfig, problems: list[str],
              notes: list[str]) -> int | None:
    """Data and models fit (channels, square images, classes), on one decoded image; a diffusion model smaller than
    the data is refused unless model.allow_downsample (a bilinear downsampling zeroes most input gradients).
    Returns the data's image size, or None after adding the problems."""
    d, n_found = models.diffusion, len(problems)
    c, h, w = sample.shape[1:]
    if d.channels != c or h != w:
        problems.append(f"data images are {c}×{h}×{w} but the diffusion model takes square {d.channels}-channel "
                        "images")
    elif h > d.image_size and not cfg.model.allow_downsample:
        problems.append(f"model.diffusion: a {d.image_size}×{d.image_size} model on {h}×{w} data would purify a "
                        f"downsampled copy ({h} → {d.image_size} → {h}, bilinear): most input pixels then get no "
                        "gradient and detail is lost. Use a model of the data's size, or set "
                        "model.allow_downsample = true to ask for it")
    elif h != d.image_size:
        notes.append(f"resize: the purifier runs at {d.image_size}×{d.image_size}: the {h}×{w} images are resized "
                     f"{h} → {d.image_size} → {h} (bilinear, inside autograd) around it")
    try:
        with torch.no_grad():
            out = models.classifier(sample.to(models.device, models.input_dtype))
    except (RuntimeError, ValueError) as e:  # e.g. channels or size the network cannot take
        problems.append(f"model.classifier fails on a {c}×{h}×{w} image of the data: " + " ".join(str(e).split()))
        return None
    top = int(labels[ids].max())
    if out.dim() != 2 or (out.shape[1] != data.n_classes if data.n_classes else out.shape[1] <= top):
        problems.append(f"model.classifier returns {tuple(out.shape)} logits; {data.name} has "
                        + (f"{data.n_classes} classes" if data.n_classes else f"labels up to {top}"))
    return None if len(problems) > n_found else h
