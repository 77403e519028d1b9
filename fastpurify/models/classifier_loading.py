"""Loading classifier state_dicts (RobustBench / DiffPure WideResNets, DMWideResNets, torchvision ResNet-50) into
fastpurify's modules; `fastpurify.load_classifier` (also importable from `fastpurify.models.loaders`)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from .checkpoint_files import (
    CLASSIFIER_KINDS,
    CheckpointError,
    build_verified,
    checked_sha256,
    classifier_kind,
    count_indices,
    detect_kind,
    is_state_dict,
    read_file,
    strip_prefixes,
)
from .classifiers import DMWideResNet, ImageNetResNet50, WideResNet


def _unwrap_classifier(obj, path) -> dict:
    if isinstance(obj, (list, tuple)) and obj:
        obj = obj[0]
    for key in ("state_dict", "model_state_dict", "ema", "net", "model"):  # RobustBench, DiffPure, ADBM, GDMP
        if isinstance(obj, dict) and not is_state_dict(obj) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not is_state_dict(obj):
        raise CheckpointError(f"{path}: no classifier state_dict found (top-level keys "
                              f"{sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__})")
    return strip_prefixes(obj)


def _bn_counters(cls, cfg) -> list[str]:
    with torch.device("meta"):
        return [k for k in cls(**cfg).state_dict() if k.endswith("num_batches_tracked")]


def load_classifier(path, kind: str | None = None, *, normalize: str | None = None, device="cpu",
                    sha256: bool | str = True, **config) -> nn.Module:
    """Load a classifier state_dict into fastpurify's WRN / DM-WRN / ResNet-50 (eval mode, frozen, x ∈ [0, 1]).

    kind: None (detect) | 'wrn' (RobustBench/DiffPure WideResNet) | 'dm-wrn' (RobustBench DMWideResNet) |
    'resnet50' (torchvision, ImageNet).  normalize: 'none' | 'cifar10' | 'cifar100' | 'imagenet'; default: dm-wrn →
    cifar10 (cifar100 with 100 classes);
    wrn → cifar10 for DiffPure's WRN-70-16(-dropout), none otherwise (RobustBench 'Standard'); resnet50 → imagenet.
    """
    path = Path(path)
    digest = checked_sha256(path, sha256)
    obj = read_file(path)[0]
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict) and "shadow_params" in obj["ema"]:
        raise CheckpointError(f"{path}: a score_sde diffusion checkpoint, not a classifier; give it as the "
                              "diffusion model")
    sd = _unwrap_classifier(obj, path)
    found = classifier_kind(sd)
    if found is None:
        try:
            diffusion = detect_kind(sd)
        except CheckpointError:
            diffusion = None
        hint = f" it is a {diffusion!r} diffusion model, not a classifier;" if diffusion else ""
        raise CheckpointError(f"{path}: unrecognised classifier state_dict;{hint} supported kinds: "
                              f"{', '.join(CLASSIFIER_KINDS)} (WideResNet, DMWideResNet, torchvision ResNet-50); "
                              f"first keys: {list(sd)[:4]}")
    if kind is not None and kind != found:
        raise CheckpointError(f"{path} looks like a {found!r} classifier, not {kind!r}")
    if found == "resnet50":
        cls, cfg = ImageNetResNet50, dict(num_classes=sd["fc.weight"].shape[0], normalize=normalize or "imagenet")
        sd = {f"model.{k}": v for k, v in sd.items()}
    else:
        dm = found == "dm-wrn"
        grp, head = ("layer.0.block", "logits") if dm else ("block1.layer", "fc")
        depth = 6 * count_indices(sd, rf"{re.escape(grp)}\.(\d+)\.") + 4
        width = sd[f"{grp}.0.conv_0.weight" if dm else f"{grp}.0.conv1.weight"].shape[0] // 16
        n_classes = sd[f"{head}.weight"].shape[0]
        # RobustBench's DM models normalise with their dataset's statistics (CIFAR-100 for its 100-class ones)
        default_norm = ("cifar100" if dm and n_classes == 100 else "cifar10" if dm or (depth, width) == (70, 16)
                        else "none")
        cls = DMWideResNet if dm else WideResNet
        cfg = dict(depth=depth, num_classes=n_classes, normalize=normalize or default_norm,
                   **({"width": width} if dm else {"widen_factor": width}))
    cfg.update(config)
    # Files saved before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked (unused in eval); torch fills it too.
    sd.update({k: torch.tensor(0) for k in _bn_counters(cls, cfg) if k not in sd})
    net = build_verified(cls, cfg, sd, str(path))
    net._set_norm(cfg["normalize"])  # the normalisation buffers are not in the file (built on meta: recreate)
    net.meta = dict(kind=found, path=str(path), sha256=digest, config=cfg,
                    params=sum(p.numel() for p in net.parameters()))
    return net.to(device)
