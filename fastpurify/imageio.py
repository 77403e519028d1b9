"""Minimal PNG writing (grayscale or RGB, 8-bit) with zlib, so reports need no imaging dependency; and the one way
reports reach matplotlib for plots (optional: `pyplot()` is None without it)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import torch


def write_png(path: str | Path, img: torch.Tensor) -> None:
    """img: (C, H, W) float in [0, 1], C ∈ {1, 3}; written with round-to-nearest 8-bit quantisation."""
    c, h, w = img.shape
    if c not in (1, 3):
        raise ValueError(f"write_png needs 1 or 3 channels, got {c}")
    px = (img.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    raw = b"".join(b"\x00" + px[r].tobytes() for r in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    color = 0 if c == 1 else 2
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def image_grid(rows: list[torch.Tensor], scale: int = 4, pad: int = 1) -> torch.Tensor:
    """Rows of images (n, C, H, W) each → one (C, H', W') grid, upscaled by `scale` (nearest), white padding."""
    n = max(r.shape[0] for r in rows)
    c, h, w = rows[0].shape[1:]
    H, W = h * scale + pad, w * scale + pad
    grid = torch.ones(c, len(rows) * H + pad, n * W + pad)
    for i, r in enumerate(rows):
        up = torch.nn.functional.interpolate(r.detach().float().cpu(), scale_factor=scale, mode="nearest")
        for j in range(r.shape[0]):
            grid[:, pad + i * H: pad + i * H + h * scale, pad + j * W: pad + j * W + w * scale] = up[j]
    return grid


def pyplot():
    """matplotlib.pyplot on the headless Agg backend, or None when matplotlib is not installed (plots are optional:
    reports say when they were not drawn)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt
