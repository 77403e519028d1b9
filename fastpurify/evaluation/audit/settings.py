"""What an audit runs: the data, the threat model, the attacks' budget and the protocol's draws
(`audit(spec, AuditSettings(...))`, or keywords: `audit(spec, n=8)`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from ..protocol import ESCALATE, ProtocolConfig


@dataclass(frozen=True)
class AuditSettings:
    data: str = "digits"              # digits | cifar10:PATH | cifar100:PATH (first n, test split) |
                                      # imagenet:PATH (ImageFolder of synset folders, Res256Crop224; n seeded ids)
    n: int = 32                       # images: the first n of the test split
    eps: float = 0.15                 # radius on the [0, 1] scale
    norm: str = "linf"                # linf | l2
    steps: int = 20                   # iterations of every attack
    n_reevals: int = 8                # N report draws per candidate
    n_select: int = 4                 # S selection draws per candidate
    max_eot: int = 32                 # most EOT draws per step the audit may spend
    consistency_draws: int = 8        # single-draw gradients per sample for the consistency check
    fd_n: int = 2                     # images in each finite-difference check
    escalate: int = ESCALATE          # reruns of a non-converged exact attack with twice the steps
    large_eps_n: int = 8              # images in the large-ε and consistency checks
    large_eps_steps: int = 10
    seed: int = 0
    batched: bool = False             # randomised batch-independent module on whole batches, seeded per call
    eps_curve: tuple[float, ...] = (0.25, 0.5, 2.0)  # radii (multiples of eps) of the ε curve; () = off
    eps_curve_n: int = 32             # images of the ε curve (the first ones; all of them at the default n)

    def __post_init__(self):
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm {self.norm!r}: expected 'linf' or 'l2'")
        for field in ("n", "steps", "n_reevals", "n_select", "max_eot", "consistency_draws", "large_eps_n",
                      "large_eps_steps", "eps_curve_n"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} = {getattr(self, field)}: must be ≥ 1")
        if not (self.eps > 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps = {self.eps}: must be a positive finite radius")
        if self.escalate < 0 or self.fd_n < 0:
            raise ValueError("escalate and fd_n must be ≥ 0")
        object.__setattr__(self, "eps_curve", tuple(sorted(float(m) for m in self.eps_curve)))  # a list is fine too
        if not all(m > 0 and math.isfinite(m) for m in self.eps_curve):
            raise ValueError(f"eps_curve = {self.eps_curve}: every multiple of eps must be positive and finite")

    def protocol(self, randomized: bool, shape) -> ProtocolConfig:
        """The protocol's configuration: one draw for a deterministic defence (every draw is the same)."""
        return ProtocolConfig(eps=self.eps, norm=self.norm, n_reevals=self.n_reevals if randomized else 1,
                              n_select=self.n_select if randomized else 1, seed=self.seed,
                              large_eps=large_eps_for(self.norm, shape), large_eps_n=self.large_eps_n,
                              large_eps_steps=self.large_eps_steps, escalate=self.escalate, fd_n=self.fd_n)

    def as_dict(self) -> dict:
        return asdict(self)


def large_eps_for(norm: str, shape) -> float:
    """ℓ∞ 0.5 lets every pixel reach any value from mid-grey; ℓ2 the same budget spread over every element."""
    return 0.5 if norm == "linf" else 0.5 * math.sqrt(math.prod(shape))
