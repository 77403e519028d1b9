"""Content hashes for cache keys: network weights and data tensors (the code's own is `_version.code_fingerprint`)."""

from __future__ import annotations

import hashlib

import torch


def _update(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def weights_fingerprint(*modules: torch.nn.Module | None) -> str:
    """sha256 (16 hex) over each module's state_dict (names, dtypes, shapes, bytes: parameters and buffers), in
    argument order; None stands for an absent network and is hashed as such."""
    h = hashlib.sha256()
    for k, m in enumerate(modules):
        h.update(f"module {k}\0".encode())
        if m is None:
            h.update(b"none\0")
            continue
        if not isinstance(m, torch.nn.Module):
            raise TypeError(f"weights_fingerprint takes nn.Modules (or None), got {type(m).__name__} at {k}")
        for name, t in m.state_dict().items():
            _update(h, name, t)
    return h.hexdigest()[:16]


def tensors_fingerprint(*tensors: torch.Tensor) -> str:
    """sha256 (16 hex) over the tensors' dtypes, shapes and contents, in argument order."""
    h = hashlib.sha256()
    for k, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"tensors_fingerprint takes tensors, got {type(t).__name__} at {k}")
        _update(h, f"tensor {k}", t)
    return h.hexdigest()[:16]
