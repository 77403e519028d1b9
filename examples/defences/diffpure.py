"""Honest DiffPure on the embedded digits models (VP-SDE, t* 0.1, Euler–Maruyama), wrapped as a plain torch module
that knows nothing of fastpurify's seed= / grad=: its noise is drawn from torch's generator, its gradient is
autograd's exact one through every sampler step.
Expected verdict: reliable."""

from torch import nn


class DiffPure(nn.Module):
    def __init__(self, purifier: nn.Module):
        super().__init__()
        self.purifier = purifier

    def forward(self, x):
        return self.purifier(x)  # seed None: one seed drawn from torch's generator per call


def build(steps: int = 10):
    """(classifier, purifier); steps: sampler steps (network calls) of the purification."""
    from fastpurify.methods import build_method
    from fastpurify.zoo import digits

    m = digits()
    return m.classifier, DiffPure(build_method("diffpure", m.diffusion, settings={"preset": "diffpure",
                                                                                  "steps": steps}))
