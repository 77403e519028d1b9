"""The models and defences of a sweep: classifier ∘ purifier per configured method, in one interface.

`Defence.forward(grad)` is the harness's `forward(x, seeds) → logits` with the purifier's gradient mode set for
that attack ('full', 'autograd', 'adjoint', 'bpda'; None keeps the method's own); method 'none' is the classifier
alone (seeds ignored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ...api import Purifier
from ...methods import DIGITS, MethodPurifier, build_method, with_scale
from .config import GUIDED_OR_MULTI, ConfigError, MethodConfig, SweepConfig

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
        from ... import load_diffusion

        diffusion = load_diffusion(m.diffusion, m.diffusion_kind or None, device=device,
                                   dtype=None if cfg.dtype == "fp32" else cfg.dtype)
    if m.classifier == "digits":
        from ...zoo import digits

        classifier = _embedded(digits().classifier, dtype, device)
    else:
        from ... import load_classifier

        classifier = load_classifier(m.classifier, m.classifier_kind or None, normalize=m.normalize or None,
                                     device=device)
    aux = None
    if m.aux == "digits":
        from ...zoo import digits_aux

        aux = _embedded(digits_aux(), dtype, device)
    elif m.aux:
        from ... import load_classifier

        aux = load_classifier(m.aux, device=device)
    return Models(diffusion, classifier.requires_grad_(False), aux, dtype, device)


class Defence:
    """classifier(purifier(x)) for one configured method."""

    def __init__(self, label: str, name: str, purifier: MethodPurifier | None, classifier: nn.Module,
                 input_dtype: torch.dtype, image_size: int):
        self.label, self.name, self.purifier, self.classifier = label, name, purifier, classifier
        self.input_dtype, self.image_size = input_dtype, image_size

    @property
    def nfe(self) -> int:
        return 0 if self.purifier is None else int(self.purifier.nfe)

    def describe(self) -> dict:
        if self.purifier is None:
            return {"method": self.name, "nfe": 0, "t_star_steps": None, "t_star_s": None}
        d = self.purifier.describe()
        cfg = d.get("config", {})
        return {**d, "method": self.name, "t_star_steps": cfg.get("t_star_steps"), "t_star_s": cfg.get("t_star_s")}

    def _purify(self, x: torch.Tensor, seeds: torch.Tensor, grad: str | None) -> torch.Tensor:
        """At the diffusion model's resolution: bilinear resize up and back inside autograd when the data differ
        (DiffPure / Lee & Kim ImageNet: 224 → 256 → 224; what fastpurify.models.ResizePurifier does)."""
        n, size = self.image_size, tuple(x.shape[-2:])
        if size == (n, n):
            return self.purifier(x, seed=seeds, grad=grad)
        u = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False)
        return F.interpolate(self.purifier(u, seed=seeds, grad=grad), size=size, mode="bilinear",
                             align_corners=False)

    def forward(self, grad: str | None, capture: list | None = None):
        """forward(x, seeds) → logits with gradient mode `grad`; capture: a list receiving (purified, logits)."""
        def fwd(x, seeds):
            x_pur = x if self.purifier is None else self._purify(x, seeds, grad)
            logits = self.classifier(x_pur)
            if capture is not None:
                capture.append((x_pur.detach(), logits.detach()))
            return logits

        return fwd


def build_defence(mc: MethodConfig, models: Models, cfg: SweepConfig) -> Defence:
    backend = cfg.backend or None
    if mc.name == "none":
        pur = None
    elif mc.name in GUIDED_OR_MULTI:
        settings = with_scale(mc.name, mc.scale) if mc.scale is not None else DIGITS[mc.name]
        pur = build_method(mc.name, models.diffusion, models.aux, t_star=mc.t_star, settings=settings,
                           backend=backend)
    else:  # a preset (diffpure, ddpm, ddim, diffpure-cifar10, …), as build_method builds its plain methods
        p = Purifier(models.diffusion, mc.name, t_star=mc.t_star, steps=mc.steps, backend=backend)
        pur = MethodPurifier(mc.name, p, {"config": p.config.as_dict(), "nfe": p.config.nfe})
    return Defence(mc.label, mc.name, pur, models.classifier, models.input_dtype, models.diffusion.image_size)


def check_shapes(models: Models, sample: torch.Tensor, n_classes: int) -> None:
    """Data and models fit (channels, square images, classes): checked on one image before any work.  Another
    size than the diffusion model's is resized around the purifier (Defence._purify)."""
    d = models.diffusion
    c, h, w = sample.shape[1:]
    if d.channels != c or h != w:
        raise ConfigError(f"data images are {c}×{h}×{w} but the diffusion model takes square {d.channels}-channel "
                          "images")
    with torch.no_grad():
        out = models.classifier(sample.to(models.device, models.input_dtype))
    if out.dim() != 2 or out.shape[1] < n_classes:
        raise ConfigError(f"the classifier returns {tuple(out.shape)} logits; the labels need ≥ {n_classes} classes")
