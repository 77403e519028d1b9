"""A very noisy randomised defence, written against torch alone: heavy Gaussian noise on the image, squashed
smoothly back into [0, 1].  Every operation is differentiable and autograd is exact, but one draw's gradient
points almost anywhere: an attack needs many EOT draws per step.
Expected verdict: not reliable — gradient too noisy for the audit's EOT budget (gradient consistency)."""

import torch
from torch import nn


class HeavyNoise(nn.Module):
    def __init__(self, sigma: float = 3.0, gain: float = 3.0):
        super().__init__()
        self.sigma, self.gain = sigma, gain

    def forward(self, x):
        noisy = x + self.sigma * torch.randn_like(x)
        return torch.sigmoid(self.gain * (noisy - 0.5))


def build():
    from fastpurify.zoo import digits

    return digits().classifier, HeavyNoise()
