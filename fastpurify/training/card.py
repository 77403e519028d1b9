"""The digits card's sample grid: DDPM ancestral samples from pure noise (T = 1000 steps), saved as PNG."""

from __future__ import annotations

from pathlib import Path

import torch

from ..imageio import image_grid, write_png
from .. import ops
from ..ops import FORWARD, derive_seeds
from ..samplers import NoiseStreams, sample_ddpm


def add_sample_grid(weights_dir: Path, seed: int = 0, n: int = 64) -> dict:
    """Sample n digits with the saved DDPM (fixedsmall, clipped x̂₀), write digits_samples.png; return card fields."""
    from ..zoo import embedded as D

    D._cached_models.cache_clear()
    models = D._cached_models() if weights_dir == D.WEIGHTS_DIR else _load_from(weights_dir)
    m = models.diffusion
    seeds = derive_seeds(seed, torch.arange(n))
    shape = (n, D.CHANNELS, D.IMAGE_SIZE, D.IMAGE_SIZE)
    with torch.no_grad():
        u = ops.normal(seeds, shape, step=0, purpose=FORWARD, backend="torch")
        u = sample_ddpm(m, u, list(range(999, -1, -1)), noise=NoiseStreams(seeds, shape), variance="fixedsmall")
        x = ((u + 1) / 2).clamp(0, 1)
        pred = models.classifier(x).softmax(1)
    write_png(weights_dir / "digits_samples.png", image_grid([x[i:i + 16] for i in range(0, n, 16)], scale=3))
    conf, label = pred.max(1)
    return {"samples": {"file": "digits_samples.png", "n": n, "sampler": "DDPM ancestral, 1000 steps, fixedsmall",
                        "seed": seed, "classifier_mean_confidence": round(float(conf.mean()), 4),
                        "classifier_label_histogram": torch.bincount(label, minlength=10).tolist()}}


def _load_from(weights_dir: Path):
    from ..zoo import embedded as D

    unet = D._load_module(D.build_unet(), weights_dir / "digits_ddpm.safetensors")
    clf = D._load_module(D.build_classifier(), weights_dir / "digits_classifier.safetensors")
    return D.DigitsModels(diffusion=D.EpsDiffusion(unet, image_size=D.IMAGE_SIZE, channels=D.CHANNELS),
                          classifier=clf, card={})
