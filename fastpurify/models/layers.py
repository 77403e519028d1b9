"""Building blocks shared by the pretrained-architecture ports (NCSN++, ADM, DDPM `Model`, diffusers UNet2DModel).

Precision model (docs/CHECKPOINTS.md §3, generalised from guided-diffusion's `convert_to_fp16`):
  - every conv / attention projection casts its input to its own weight dtype, so a net whose torso weights were
    converted to fp16/bf16 runs in that dtype with no other change;
  - `GroupNorm32` always computes in fp32 and returns the input dtype (guided-diffusion's GroupNorm32);
  - time-embedding MLPs and the output head stay fp32 (see `set_torso_dtype`).
For fp32 weights and inputs every cast here is a no-op, so fp32 numerics equal the plain torch layers.

Attention goes through `attention(q, k, v)`; the backend is a per-module attribute ('sdpa' default, 'math' = each
original's explicit softmax arithmetic, 'xformers' when installed), set with `set_attention_backend`.
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_BACKENDS = ("sdpa", "math", "xformers")


# ---------------------------------------------------------------------------------------------- casting layers
class Conv2d(nn.Conv2d):
    def forward(self, x):
        return super().forward(x.to(self.weight.dtype))


class Conv1d(nn.Conv1d):
    def forward(self, x):
        return super().forward(x.to(self.weight.dtype))


class Linear(nn.Linear):
    def forward(self, x):
        return super().forward(x.to(self.weight.dtype))


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32, returned in the input dtype (identical to nn.GroupNorm for fp32 input)."""

    def forward(self, x):
        return F.group_norm(x.float(), self.num_groups, self.weight, self.bias, self.eps).to(x.dtype)


def set_torso_dtype(torso: list[nn.Module], dtype: torch.dtype) -> None:
    """Convert the weights of every conv and attention projection inside `torso` to `dtype`.

    Norms keep fp32 weights (they compute in fp32); plain Linear layers outside attention (time-embedding
    projections) keep fp32, as guided-diffusion's convert_to_fp16 does.  fp32 restores everything.
    """
    for part in torso:
        for m in part.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d)) or getattr(m, "low_precision_ok", False):
                for p in m.parameters(recurse=False):
                    p.data = p.data.to(dtype)


# ---------------------------------------------------------------------------------------------- time embeddings
def embedding_frequencies(half: int, *, shift: float, rate_first: bool, max_period: float = 10000.0,
                          device=None) -> torch.Tensor:
    """ω_j = max_period^(−j / (half − shift)), j < half, in fp32, rounded the way each original computes them.

    rate_first=True — DDPM's TF code, pesser's / SDEdit's `Model`, score_sde's `get_timestep_embedding`: the rate
    ln(max_period) / (half − shift) is a Python float, rounded once to fp32, then ω_j = exp(j · −rate).
    rate_first=False — guided-diffusion's `timestep_embedding`, diffusers: ω_j = exp((−ln(max_period)·j) / (half −
    shift)), the fp32 product rounded before the division.  The two differ in the last bit for some j, which the
    network amplifies to ~1e-6 at its output.
    """
    j = torch.arange(half, dtype=torch.float32, device=device)
    if rate_first:
        return torch.exp(j * -(math.log(max_period) / (half - shift)))
    return torch.exp(-math.log(max_period) * j / (half - shift))


def sinusoidal_embedding(t: torch.Tensor, dim: int, *, shift: float, sin_first: bool, rate_first: bool,
                         max_period: float = 10000.0):
    """(B,) float time → (B, dim) fp32: [sin(t·ω), cos(t·ω)] or [cos, sin], zero-padded to an odd dim.

    DDPM / score_sde: shift 1, [sin, cos], rate_first.  diffusers: its freq_shift, [sin, cos] (no flip), not rate_first.
    ADM: shift 0, [cos, sin], not rate_first.  See `embedding_frequencies`.
    """
    freqs = embedding_frequencies(dim // 2, shift=shift, rate_first=rate_first, max_period=max_period,
                                  device=t.device)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)] if sin_first else [torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


# ---------------------------------------------------------------------------------------------- attention
def xformers_why_not() -> str | None:
    """None when the xformers backend can run here, else the reason."""
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed (optional extra: pip install 'fastpurify[gpu]')"
    return None


def attention_backends() -> dict[str, str | None]:
    """{backend: None if available else why not}."""
    return {"sdpa": None, "math": None, "xformers": xformers_why_not()}


def check_attention_backend(name: str) -> str:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {', '.join(ATTENTION_BACKENDS)}")
    why = attention_backends()[name]
    if why is not None:
        raise RuntimeError(f"attention backend {name!r} is unavailable: {why}")
    return name


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "sdpa", *,
              split_scale: bool = False) -> torch.Tensor:
    """softmax(q kᵀ / √d) v.  q, k, v: (B, heads, L, d) → (B, heads, L, d).

    backend 'math' reproduces the originals' arithmetic.  split_scale=False (DDPM `Model`, score_sde, diffusers):
    logits q·k in at least fp32, then scaled by d^−½.  split_scale=True (guided-diffusion's QKVAttentionLegacy):
    q and k are each scaled by d^−¼ and multiplied in their own dtype (fp16 in the fp16 torso), the softmax runs in
    fp32 and is cast back before the product with v.  The other backends ignore split_scale.
    """
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if backend == "math":
        if split_scale:
            s = 1 / math.sqrt(math.sqrt(q.shape[-1]))
            w = torch.einsum("bhld,bhmd->bhlm", q * s, k * s)
            return torch.einsum("bhlm,bhmd->bhld", w.float().softmax(dim=-1).to(w.dtype), v)
        acc = torch.promote_types(q.dtype, torch.float32)
        w = torch.einsum("bhld,bhmd->bhlm", q.to(acc), k.to(acc)) * q.shape[-1] ** -0.5
        return torch.einsum("bhlm,bhmd->bhld", w.softmax(dim=-1).to(v.dtype), v)
    if backend == "xformers":
        import xformers.ops as xops  # availability checked by set_attention_backend

        if q.device.type != "cuda":
            raise RuntimeError(f"the xformers attention backend needs CUDA tensors, got {q.device}; use 'sdpa'")

        # xformers takes (B, L, heads, d).
        out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    raise ValueError(f"unknown attention backend {backend!r}")


class AttentionBase(nn.Module):
    """Marker base: every attention block carries `attn_backend` and its projections may run in low precision."""

    attn_backend = "sdpa"


def set_attention_backend(module: nn.Module, name: str) -> nn.Module:
    """Route every attention block in `module` through backend `name` ('sdpa' | 'math' | 'xformers')."""
    check_attention_backend(name)
    for m in module.modules():
        if isinstance(m, AttentionBase):
            m.attn_backend = name
    return module


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 conv: the same module (and key `conv`) in guided-diffusion's ADM and the DDPM Model."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class NIN(nn.Module):
    """score_sde's 1×1 'network in network' layer: y = x·W + b over channels; W has shape (in, out)."""

    low_precision_ok = True

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cin, cout))
        self.b = nn.Parameter(torch.zeros(cout))
        nn.init.normal_(self.W, std=cin ** -0.5)

    def forward(self, x):  # x: (B, C, H, W)
        x = x.to(self.W.dtype)
        return torch.einsum("bchw,co->bohw", x, self.W) + self.b[None, :, None, None]


def swish(x):
    return F.silu(x)
