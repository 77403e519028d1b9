"""A JPEG-style pre-processor, written against torch alone: 8×8 block DCT, coefficients quantised (rounded to
multiples of a step growing with frequency), inverse DCT.  Deterministic; the rounding has zero derivative almost
everywhere, so white-box gradients vanish and BPDA (identity backward) is the attack that works.
Expected verdict: not reliable — zero-gradient elements (and BPDA stronger than the exact attack)."""

import math

import torch
from torch import nn


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix: row k is the k-th cosine basis vector."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


class JPEGLike(nn.Module):
    def __init__(self, block: int = 8, step: float = 0.08):
        super().__init__()
        self.block = block
        self.register_buffer("dct", dct_matrix(block).float())
        f = torch.arange(block, dtype=torch.float32)
        self.register_buffer("q", step * (1.0 + f[:, None] + f[None, :]))  # coarser at high frequency

    def forward(self, x):
        b, c, h, w = x.shape
        n = self.block
        if h % n or w % n:
            raise ValueError(f"JPEGLike needs sides divisible by {n}, got {h}x{w}")
        blocks = x.reshape(b, c, h // n, n, w // n, n).transpose(3, 4)  # (b, c, H/n, W/n, n, n)
        coef = self.dct @ blocks @ self.dct.T
        coef = torch.round(coef / self.q) * self.q
        back = (self.dct.T @ coef @ self.dct).transpose(3, 4).reshape(b, c, h, w)
        return back.clamp(0, 1)


def build():
    from fastpurify.zoo import digits

    return digits().classifier, JPEGLike()
