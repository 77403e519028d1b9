"""Shared by the fixture examples: a purifier of fastpurify.evaluation.fixtures (which take seed=) as a plain torch
module, its noise seeded from torch's generator as any third-party module would draw it."""

import torch
from torch import nn


class Plain(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        seeds = torch.randint(0, 2**62, (x.shape[0],))
        return self.inner(x, seed=seeds)


def build_fixture(kind: str):
    from fastpurify.evaluation.fixtures import masked_purifier
    from fastpurify.zoo import digits

    return digits().classifier, Plain(masked_purifier(kind))
