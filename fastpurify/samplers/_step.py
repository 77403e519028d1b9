"""What the sampler loops share: the device step counter and the guidance hook's return convention."""

from __future__ import annotations

from collections import OrderedDict

import torch

_TABLES: OrderedDict = OrderedDict()  # (table bytes, device, dtype) → the device copy; read-only by contract
_MAX_TABLES = 256


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


def device_table(table: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """`table.to(device, dtype)`, built once per distinct table: later calls (and CUDA-graph captures, where a
    host-to-device copy is not allowed) get the same device tensor.  Callers never modify it."""
    key = (table.numpy().tobytes(), tuple(table.shape), str(device), dtype)
    hit = _TABLES.get(key)
    if hit is None:
        hit = _TABLES[key] = table.to(device, dtype)
        if len(_TABLES) > _MAX_TABLES:
            _TABLES.popitem(last=False)
    else:
        _TABLES.move_to_end(key)
    return hit
