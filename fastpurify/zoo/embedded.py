"""The embedded default: scikit-learn's 8×8 digits at 16×16, a tiny DDPM and a small CNN, shipped as safetensors.

Data: 1,797 images, values 0..16 → [0, 1], bilinearly upsampled to 16×16, one channel.
Split (fixed, stratified, seed 0): test 20 %, validation 10 %, train the rest — `split_indices()`.
Weights: `fastpurify/zoo/weights/digits_*.safetensors`, made by `fastpurify train-digits` (see the card).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.diffusion import EpsDiffusion
from ..models.small_cnn import SmallCNN
from ..models.small_unet import SmallUNet

WEIGHTS_DIR = Path(__file__).parent / "weights"
IMAGE_SIZE, CHANNELS, CLASSES = 16, 1, 10
SPLIT_SEED = 0
UNET_CONFIG = dict(in_ch=1, ch=16, mults=(1, 2, 4))
CNN_CONFIG = dict(in_ch=1, classes=10, width=32)


@lru_cache(maxsize=1)
def _all_digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits  # local: keeps `import fastpurify` cheap

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8) in [0, 1]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False).clamp(0, 1)
    return x, torch.tensor(d.target, dtype=torch.long)


@lru_cache(maxsize=1)
def split_indices() -> dict[str, list[int]]:
    """Fixed stratified split of the 1,797 digits: {'train', 'val', 'test'} → sorted index lists."""
    from sklearn.model_selection import train_test_split

    _, y = _all_digits()
    idx = list(range(len(y)))
    rest, test = train_test_split(idx, test_size=0.2, stratify=y.numpy(), random_state=SPLIT_SEED)
    train, val = train_test_split(rest, test_size=0.125, stratify=y[rest].numpy(), random_state=SPLIT_SEED)
    return {"train": sorted(train), "val": sorted(val), "test": sorted(test)}


def load_split(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) of one split: x (N, 1, 16, 16) float32 in [0, 1], y (N,) int64."""
    if name not in ("train", "val", "test"):
        raise ValueError(f"unknown split {name!r}; expected 'train', 'val' or 'test'")
    x, y = _all_digits()
    idx = torch.tensor(split_indices()[name])
    return x[idx].clone(), y[idx].clone()


def build_unet() -> SmallUNet:
    return SmallUNet(**UNET_CONFIG)


def build_classifier() -> SmallCNN:
    return SmallCNN(**CNN_CONFIG)


def _load_module(module: torch.nn.Module, path: Path) -> torch.nn.Module:
    from safetensors.torch import load_file

    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; rebuild the embedded models with `fastpurify train-digits`")
    module.load_state_dict(load_file(str(path)))
    return module.eval().requires_grad_(False)


@dataclass
class DigitsModels:
    """The embedded default models.  `.diffusion` is the denoiser, `.classifier` takes [0, 1] images."""

    diffusion: EpsDiffusion
    classifier: torch.nn.Module
    card: dict

    image_size: int = IMAGE_SIZE
    channels: int = CHANNELS

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The held-out split (never used for training or tuning)."""
        return load_split("test")

    def val_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The validation split (for tuning settings)."""
        return load_split("val")


@lru_cache(maxsize=1)
def _cached_models() -> DigitsModels:
    unet = _load_module(build_unet(), WEIGHTS_DIR / "digits_ddpm.safetensors")
    clf = _load_module(build_classifier(), WEIGHTS_DIR / "digits_classifier.safetensors")
    card_path = WEIGHTS_DIR / "digits_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    diffusion = EpsDiffusion(unet, image_size=IMAGE_SIZE, channels=CHANNELS, time_input="index", name="digits-ddpm")
    return DigitsModels(diffusion=diffusion.eval().requires_grad_(False), classifier=clf, card=card)


def digits() -> DigitsModels:
    """The embedded digits models (frozen, eval mode, CPU).  Read from disk once; every call returns its own copy,
    so one caller switching modes or moving devices never changes another caller's models."""
    return copy.deepcopy(_cached_models())


@lru_cache(maxsize=1)
def _cached_aux() -> torch.nn.Module:
    return _load_module(build_classifier(), WEIGHTS_DIR / "digits_aux.safetensors")


def digits_aux() -> torch.nn.Module:
    """AGDM's auxiliary network φ for the digits: a SmallCNN trained with TRADES (`fastpurify train-aux`,
    card: weights/digits_aux_card.json; feature layer 'features').  Its own copy on every call, as digits()."""
    return copy.deepcopy(_cached_aux())
