"""Classifiers in the layouts the public robust-benchmark weights use (docs/CHECKPOINTS.md §8).  All take x ∈ [0, 1]:
input normalisation lives inside the model (docs/CONVENTIONS.md §1.1), as non-persistent buffers (not in the files).

- `WideResNet`   — RobustBench `wide_resnet.py` / DiffPure `classifiers/cifar10_resnet.py` layout: conv1,
                   block{1,2,3}.layer.i.{bn1, conv1, bn2, conv2, convShortcut}, bn1, fc.  RobustBench 'Standard'
                   WRN-28-10 has no normalisation; DiffPure's WRN-70-16-dropout normalises with CIFAR-10 mean/std.
- `DMWideResNet` — RobustBench `dm_wide_resnet.py` (DeepMind) layout: init_conv, layer.g.block.b.{batchnorm_0, conv_0,
                   batchnorm_1, conv_1, shortcut}, batchnorm, logits; Swish; CIFAR-10 (or, for 100 classes,
                   CIFAR-100) mean/std inside.
- `ImageNetResNet50` — torchvision resnet50 (keys unchanged) behind ImageNet mean/std (DiffPure `_Wrapper_ResNet`).
Dropout is omitted: outputs never depend on train/eval mode (loaders return eval-mode, frozen models).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)  # RobustBench's CIFAR-100 DM models
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALIZATIONS = {"none": None, "cifar10": (CIFAR10_MEAN, CIFAR10_STD), "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
                  "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}


class _Normalized(nn.Module):
    def _set_norm(self, normalize: str):
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {list(NORMALIZATIONS)}, got {normalize!r}")
        self.normalize = normalize
        ms = NORMALIZATIONS[normalize] or ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.register_buffer("mean", torch.tensor(ms[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(ms[1]).view(1, 3, 1, 1), persistent=False)

    def _norm(self, x):
        return x if self.normalize == "none" else (x - self.mean) / self.std


# ---------------------------------------------------------------------------------------------- Zagoruyko WRN
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        # Pre-activation; when the width changes the shortcut also takes the activated input.
        o = F.relu(self.bn1(x))
        if not self.equal:
            x = o
        o = self.conv2(F.relu(self.bn2(self.conv1(o))))
        return (x if self.equal else self.convShortcut(x)) + o


class NetworkBlock(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[BasicBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                     for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(_Normalized):
    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10, normalize: str = "none"):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        self.config = dict(depth=depth, widen_factor=widen_factor, num_classes=num_classes, normalize=normalize)
        n, c = (depth - 4) // 6, [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self._set_norm(normalize)
        self.conv1 = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
        self.block1, self.block2, self.block3 = (NetworkBlock(n, c[i], c[i + 1], 1 if i == 0 else 2) for i in range(3))
        self.bn1 = nn.BatchNorm2d(c[3])
        self.fc = nn.Linear(c[3], num_classes)

    def forward(self, x):
        h = self.block3(self.block2(self.block1(self.conv1(self._norm(x)))))
        h = F.adaptive_avg_pool2d(F.relu(self.bn1(h)), 1).flatten(1)  # = avg_pool2d(·, 8) at 32×32
        return self.fc(h)


# ---------------------------------------------------------------------------------------------- DeepMind WRN
class DMBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.batchnorm_0, self.conv_0 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 0, bias=False)
        self.batchnorm_1, self.conv_1 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, 0, bias=False) if cin != cout else None
        self.stride = stride

    def forward(self, x):
        o = F.silu(self.batchnorm_0(x))
        if self.shortcut is not None:
            x = o
        # TF-style "SAME" padding: symmetric for stride 1, bottom/right only for stride 2.
        o = self.conv_0(F.pad(o, (1, 1, 1, 1) if self.stride == 1 else (0, 1, 0, 1)))
        o = self.conv_1(F.silu(self.batchnorm_1(o)))
        return (x if self.shortcut is None else self.shortcut(x)) + o


class DMBlockGroup(nn.Module):
    def __init__(self, n: int, cin: int, cout: int, stride: int):
        super().__init__()
        self.block = nn.Sequential(*[DMBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)])

    def forward(self, x):
        return self.block(x)


class DMWideResNet(_Normalized):
    def __init__(self, depth: int = 70, width: int = 16, num_classes: int = 10, normalize: str = "cifar10"):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"DMWideResNet depth must be 6n + 4, got {depth}")
        self.config = dict(depth=depth, width=width, num_classes=num_classes, normalize=normalize)
        n, c = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self._set_norm(normalize)
        self.init_conv = nn.Conv2d(3, c[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(*[DMBlockGroup(n, c[i], c[i + 1], 1 if i == 0 else 2) for i in range(3)])
        self.batchnorm = nn.BatchNorm2d(c[3])
        self.logits = nn.Linear(c[3], num_classes)

    def forward(self, x):
        h = F.silu(self.batchnorm(self.layer(self.init_conv(self._norm(x)))))
        return self.logits(F.adaptive_avg_pool2d(h, 1).flatten(1))


# ---------------------------------------------------------------------------------------------- ImageNet
class ImageNetResNet50(_Normalized):
    """torchvision resnet50 behind ImageNet normalisation.  `.model` holds the torchvision module (file keys)."""

    def __init__(self, num_classes: int = 1000, normalize: str = "imagenet"):
        super().__init__()
        import torchvision

        self.config = dict(num_classes=num_classes, normalize=normalize)
        self._set_norm(normalize)
        self.model = torchvision.models.resnet50(weights=None, num_classes=num_classes)

    def forward(self, x):
        return self.model(self._norm(x))
