"""Guidance terms as pure functions of tensors (docs/METHODS.md §5, §8).  Each returns one value per sample (B,),
so the gradient of its sum gives every sample its own gradient: batch-invariant unless 'global_mean' is asked for."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reduce_per_sample(v: torch.Tensor, reduction: str) -> torch.Tensor:
    """(B, ...) → (B,).  'per_sample_mean' | 'per_sample_sum' | 'global_mean' (GDMP/F.mse_loss-compatible:
    each sample's share of the batch mean, so the effective scale falls as 1/B — record the batch size)."""
    flat = v.flatten(1)
    if reduction == "per_sample_mean":
        return flat.mean(1)
    if reduction == "per_sample_sum":
        return flat.sum(1)
    if reduction == "global_mean":
        return flat.sum(1) / flat.numel()
    raise ValueError(f"unknown reduction {reduction!r}; expected 'per_sample_mean', 'per_sample_sum' or 'global_mean'")


def mse(a: torch.Tensor, b: torch.Tensor, reduction: str = "per_sample_mean") -> torch.Tensor:
    return reduce_per_sample((a - b) ** 2, reduction)


def _gauss_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 2.0, window: int = 11, sigma: float = 1.5,
         reduction: str = "per_sample_mean") -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with an 11×11 Gaussian window (σ 1.5), 'valid' convolution,
    K1 = 0.01, K2 = 0.03.  a, b: (B, C, H, W) on a scale of width data_range ([−1, 1] → 2).  Smaller images
    use a window shrunk to the image size."""
    C = a.shape[1]
    window = min(window, a.shape[-1], a.shape[-2])
    w = _gauss_window(window, sigma, C, a.device, a.dtype)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(t):
        return F.conv2d(t, w, groups=C)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return reduce_per_sample(s, reduction)


def feature_distance(h: torch.Tensor, r: torch.Tensor, kind: str = "sq_l2",
                     reduction: str = "per_sample_mean") -> torch.Tensor:
    """D(h, r) between feature maps (B, ...): 'sq_l2' (MSE), 'l2', 'l1', 'cosine' (1 − cos)."""
    if kind == "sq_l2":
        return reduce_per_sample((h - r) ** 2, reduction)
    if kind == "l1":
        return reduce_per_sample((h - r).abs(), reduction)
    if kind == "l2":
        return (h - r).flatten(1).norm(dim=1)
    if kind == "cosine":
        return 1.0 - F.cosine_similarity(h.flatten(1), r.flatten(1), dim=1)
    raise ValueError(f"unknown distance {kind!r}; expected 'sq_l2', 'l2', 'l1' or 'cosine'")


def class_log_prob(logits: torch.Tensor, labels: torch.Tensor, kind: str = "log_softmax") -> torch.Tensor:
    """log p(ŷ | x) ('log_softmax') or the raw logit of ŷ ('logit'): (B,)."""
    if kind == "log_softmax":
        return F.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
    if kind == "logit":
        return logits.gather(1, labels[:, None])[:, 0]
    raise ValueError(f"unknown class term {kind!r}; expected 'log_softmax', 'logit' or 'none'")


class FeatureTap:
    """Runs a network once and returns (logits, features of a named module) via a forward hook."""

    def __init__(self, net: torch.nn.Module, layer: str):
        modules = dict(net.named_modules())
        if layer not in modules:
            raise ValueError(f"feature layer {layer!r} not in the network; available: {', '.join(m for m in modules if m)}")
        self.net, self.module, self._out = net, modules[layer], None

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        handle = self.module.register_forward_hook(lambda m, i, o: setattr(self, "_out", o))
        try:
            logits = self.net(x)
        finally:
            handle.remove()
        feats, self._out = self._out, None
        return logits, feats
