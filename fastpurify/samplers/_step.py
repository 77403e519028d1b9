"""What the sampler loops share: the device step counter and the guidance hook's return convention."""

from __future__ import annotations

import torch


def step_counter(n: int, device: torch.device) -> torch.Tensor:
    """arange(n) on the device: `steps[k]` is a 0-dim view, the step index the fused op reads on the device
    (its coefficient row and Philox step word), so the loop never copies a step index from the host."""
    return torch.arange(n, device=device, dtype=torch.int64)


def seeds_of(noise, u: torch.Tensor, needs_noise: bool) -> tuple[torch.Tensor, int]:
    """(seeds, round) of a NoiseStreams; `noise=None` is allowed only for samplers that draw no noise."""
    if noise is None:
        if needs_noise:
            raise ValueError("this sampler draws noise: pass noise=NoiseStreams(seeds, shape)")
        return torch.zeros(u.shape[0], device=u.device, dtype=torch.int64), 0
    return noise.seeds, noise.round


def guidance_terms(guidance, u: torch.Tensor, eps: torch.Tensor, i):
    """Call the hook guidance(u, ε̂, i) → g (B, ...), or (g, gw) with terms g: (K, B, ...) and weights gw: (K, B),
    which the fused step sums itself (ops.sampler_step).  Returns (g, gw); (None, None) without a hook."""
    if guidance is None:
        return None, None
    out = guidance(u, eps, i)
    return out if isinstance(out, tuple) else (out, None)
