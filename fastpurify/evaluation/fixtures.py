"""Purifiers with known gradient masking, for testing the masking checks (and for auditing a protocol): plain
torch modules with the purifier interface the protocol uses, forward(x, seed=, grad=, trace=) → images.

- `NoisyBlur`: the honest base — a smooth, randomised purifier (a blur plus seeded Gaussian noise) whose autograd
  gradient is exact;
- `Rounds8Bit`: the base's output rounded to 8 bits: the gradient is zero almost everywhere (shattered gradients);
- `StraightThrough`: the base run under no_grad and re-attached to its input (x + (P(x) − x).detach()): the
  backward pass is the identity, not the purifier's derivative;
- `DetachedGuidance`: the base plus a guidance term computed from x but detached, while the purifier claims an
  exact gradient for every grad mode: an approximation presented as exact.

`masked_defence(kind, classifier)` builds a `Defence` around one of them.  The protocol's checks must flag
'rounding' by zero gradients, 'straight_through' by the finite-difference check (identity backward) and
'detached' by the finite-difference check (approximate gradient); 'none' (NoisyBlur) must not be flagged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..attacks.adaptive import Defence
from ..ops import FORWARD

KINDS = ("none", "rounding", "straight_through", "detached")


class NoisyBlur(nn.Module):
    """(1 − a)·x + a·blur3x3(x) + σ·z, z ~ N(0, 1) drawn from the per-sample seed (fresh noise per call).  grad
    'bpda': identity backward (the usual BPDA approximation); every other mode is exact."""

    def __init__(self, a: float = 0.5, sigma: float = 0.05):
        super().__init__()
        self.a, self.sigma = a, sigma

    def forward(self, x, seed=None, grad=None, trace=None):
        c = x.shape[1]
        k = torch.full((c, 1, 3, 3), 1.0 / 9.0, dtype=x.dtype, device=x.device)
        blur = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c)
        out = (1 - self.a) * x + self.a * blur
        if seed is not None and self.sigma:
            seeds = torch.as_tensor(seed, dtype=torch.int64).expand(x.shape[0])
            out = out + self.sigma * ops.normal(seeds, tuple(x.shape), step=0, purpose=FORWARD).to(x)
        if trace is not None:
            trace.append(out)
        return x + (out - x).detach() if grad == "bpda" else out


class Rounds8Bit(nn.Module):
    """The inner purifier's output rounded to multiples of 1/255: zero gradient almost everywhere."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, seed=None, grad=None, trace=None):
        return torch.round(self.inner(x, seed=seed, grad=grad).clamp(0, 1) * 255) / 255


class StraightThrough(nn.Module):
    """The inner purifier run without gradients, re-attached to the input: backward is the identity."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, seed=None, grad=None, trace=None):
        with torch.no_grad():
            p = self.inner(x, seed=seed, grad=grad)
        return x + (p - x).detach()


class DetachedGuidance(nn.Module):
    """inner(x) + s·tanh(conv(x)): the guidance term depends on x but is detached, whatever grad mode is asked
    for (claimed exact, as a method whose 'full' gradient silently drops a term)."""

    def __init__(self, inner: nn.Module, scale: float = 0.15, seed: int = 0):
        super().__init__()
        self.inner, self.scale = inner, scale
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("kernel", torch.randn(1, 1, 3, 3, generator=g))

    def forward(self, x, seed=None, grad=None, trace=None):
        c = x.shape[1]
        k = self.kernel.to(x).expand(c, 1, 3, 3)
        guide = torch.tanh(F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=c))
        return self.inner(x, seed=seed, grad=grad) + self.scale * guide.detach()


def masked_purifier(kind: str) -> nn.Module:
    """One of KINDS: 'none' the honest NoisyBlur, else NoisyBlur inside the named masking wrapper."""
    if kind not in KINDS:
        raise ValueError(f"unknown fixture {kind!r}; expected one of {', '.join(KINDS)}")
    base = NoisyBlur()
    return {"none": base, "rounding": Rounds8Bit(base), "straight_through": StraightThrough(base),
            "detached": DetachedGuidance(base)}[kind]


def masked_defence(kind: str, classifier: nn.Module) -> Defence:
    """A Defence: `classifier` behind masked_purifier(kind), named 'fixture-KIND'."""
    return Defence(f"fixture-{kind}", classifier, masked_purifier(kind))
