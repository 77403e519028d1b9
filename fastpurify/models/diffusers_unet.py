"""diffusers `UNet2DModel`, built from its config.json, without diffusers installed (docs/CHECKPOINTS.md §5).

Same module names as `huggingface/diffusers:src/diffusers/models/unets/unet_2d.py`: time_embedding.linear_{1,2},
conv_in, down_blocks.i.{resnets.j, attentions.j, downsamplers.0.conv}, mid_block.{resnets, attentions},
up_blocks.i.{resnets.j, attentions.j, upsamplers.0.conv}, conv_norm_out, conv_out.  Attention projections use the
current names (group_norm, to_q, to_k, to_v, to_out.0); `legacy_key_map` renames the old ones
(query, key, value, proj_attn) as diffusers itself does on load.

Supported config subset (the DDPM-style checkpoints, e.g. google/ddpm-cifar10-32): positional time embedding,
DownBlock2D / AttnDownBlock2D, UpBlock2D / AttnUpBlock2D, UNetMidBlock2D, conv resampling, 'default' time-embedding
norm, no class embedding.  Anything else is refused with the field named.

Shapes: x (B, C, S, S), τ (B,) timestep → (B, out_channels, S, S).  Dropout omitted (inference only).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttentionBase, Conv2d, GroupNorm32, Linear, attention, set_torso_dtype, sinusoidal_embedding

DOWN_TYPES, UP_TYPES = ("DownBlock2D", "AttnDownBlock2D"), ("UpBlock2D", "AttnUpBlock2D")

# Config fields that must hold these values (diffusers defaults where absent) for this port to be exact.
_REQUIRED = dict(time_embedding_type="positional", resnet_time_scale_shift="default", class_embed_type=None,
                 num_class_embeds=None, downsample_type="conv", upsample_type="conv", time_embedding_dim=None,
                 mid_block_type="UNetMidBlock2D", add_attention=True, act_fn="silu")
_DEFAULTS = dict(in_channels=3, out_channels=3, center_input_sample=False, freq_shift=0, flip_sin_to_cos=True,
                 layers_per_block=2, mid_block_scale_factor=1.0, downsample_padding=1, attention_head_dim=8,
                 norm_num_groups=32, attn_norm_num_groups=None, norm_eps=1e-5)


class ResnetBlock2D(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, groups: int, eps: float, scale: float = 1.0):
        super().__init__()
        self.norm1 = GroupNorm32(groups, cin, eps=eps)
        self.conv1 = Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = Linear(temb, cout)
        self.norm2 = GroupNorm32(groups, cout, eps=eps)
        self.conv2 = Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = Conv2d(cin, cout, 1) if cin != cout else None
        self.scale = scale  # output_scale_factor

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None].to(h.dtype)
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return (x + h) / self.scale


class AttnLinear(Linear):
    low_precision_ok = True  # attention projections run in the torso dtype


class Attention(AttentionBase):
    """diffusers Attention as UNet2DModel uses it: group_norm, q/k/v/out Linears, residual, / rescale factor."""

    def __init__(self, c: int, head_dim: int, groups: int | None, eps: float, rescale: float = 1.0):
        super().__init__()
        self.heads = c // head_dim
        self.group_norm = GroupNorm32(groups, c, eps=eps) if groups is not None else None
        self.to_q, self.to_k, self.to_v = AttnLinear(c, c), AttnLinear(c, c), AttnLinear(c, c)
        self.to_out = nn.ModuleList([AttnLinear(c, c), nn.Identity()])  # [1] is dropout upstream
        self.rescale = rescale

    def forward(self, x):
        B, C, H, W = x.shape
        h = x.reshape(B, C, H * W)
        if self.group_norm is not None:
            h = self.group_norm(h)
        h = h.transpose(1, 2)  # (B, HW, C)
        q, k, v = (m(h).reshape(B, H * W, self.heads, C // self.heads).transpose(1, 2)
                   for m in (self.to_q, self.to_k, self.to_v))
        a = attention(q, k, v, self.attn_backend).transpose(1, 2).reshape(B, H * W, C)
        a = self.to_out[0](a).transpose(1, 2).reshape(B, C, H, W)
        return (a + x) / self.rescale


class _Resample(nn.Module):
    def __init__(self, c: int, down: bool, padding: int = 1):
        super().__init__()
        self.conv = Conv2d(c, c, 3, stride=2 if down else 1, padding=padding if down else 1)
        self.down, self.padding = down, padding

    def forward(self, x):
        if not self.down:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return self.conv(F.pad(x, (0, 1, 0, 1)) if self.padding == 0 else x)


class _Block(nn.Module):
    """One down or up block: resnets (+ attentions) (+ a resampler)."""

    def __init__(self, resnets, attentions, resampler):
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        if attentions:
            self.attentions = nn.ModuleList(attentions)
        if resampler is not None:
            self.add_module("downsamplers" if resampler.down else "upsamplers", nn.ModuleList([resampler]))

    def _attn(self, j, h):
        return self.attentions[j](h) if hasattr(self, "attentions") else h

    def down(self, h, temb):
        out = []
        for j, r in enumerate(self.resnets):
            h = self._attn(j, r(h, temb))
            out.append(h)
        if hasattr(self, "downsamplers"):
            h = self.downsamplers[0](h)
            out.append(h)
        return h, out

    def up(self, h, skips, temb):
        for j, r in enumerate(self.resnets):
            h = self._attn(j, r(torch.cat([h, skips.pop()], dim=1), temb))
        return self.upsamplers[0](h) if hasattr(self, "upsamplers") else h


def check_config(cfg: dict) -> dict:
    """A diffusers config.json dict → the full config this port needs (defaults filled), or a ValueError."""
    if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise ValueError(f"config.json describes a {cfg['_class_name']}, not a UNet2DModel")
    for k, want in _REQUIRED.items():
        if cfg.get(k, want) != want and not (k == "act_fn" and cfg[k] == "swish"):
            raise ValueError(f"UNet2DModel config {k}={cfg[k]!r} is not supported (fastpurify supports {want!r})")
    out = {k: cfg.get(k, v) for k, v in _DEFAULTS.items()}
    for k in ("down_block_types", "up_block_types", "block_out_channels"):
        if k not in cfg:
            raise ValueError(f"UNet2DModel config lacks {k!r}")
        out[k] = tuple(cfg[k])
    bad = [t for t in out["down_block_types"] if t not in DOWN_TYPES] + \
          [t for t in out["up_block_types"] if t not in UP_TYPES]
    if bad:
        raise ValueError(f"unsupported UNet2DModel block types {bad}; supported: {DOWN_TYPES + UP_TYPES}")
    if not len(out["down_block_types"]) == len(out["up_block_types"]) == len(out["block_out_channels"]):
        raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
    out["sample_size"] = cfg.get("sample_size")
    return out


class DiffusersUNet2D(nn.Module):
    """UNet2DModel from a (checked) config dict; see the module docstring."""

    def __init__(self, config: dict):
        super().__init__()
        c = self.config = check_config(config)
        boc, groups, eps = c["block_out_channels"], c["norm_num_groups"], c["norm_eps"]
        hd = c["attention_head_dim"]
        temb = 4 * boc[0]
        # The fp32 time MLP is registered first: callers read the working dtype off the first parameter.
        self.time_embedding = nn.Module()
        self.time_embedding.linear_1, self.time_embedding.linear_2 = Linear(boc[0], temb), Linear(temb, temb)
        self.conv_in = Conv2d(c["in_channels"], boc[0], 3, padding=1)
        self.down_blocks, cout = nn.ModuleList(), boc[0]
        for i, kind in enumerate(c["down_block_types"]):
            cin, cout = cout, boc[i]
            res = [ResnetBlock2D(cin if j == 0 else cout, cout, temb, groups, eps)
                   for j in range(c["layers_per_block"])]
            att = [Attention(cout, hd or cout, groups, eps) for _ in res] if kind.startswith("Attn") else []
            last = i == len(boc) - 1
            self.down_blocks.append(_Block(res, att, None if last else _Resample(cout, True, c["downsample_padding"])))
        mid_c, scale = boc[-1], c["mid_block_scale_factor"]
        attn_groups = c["attn_norm_num_groups"] or groups
        self.mid_block = nn.Module()
        self.mid_block.resnets = nn.ModuleList([ResnetBlock2D(mid_c, mid_c, temb, groups, eps, scale) for _ in "01"])
        self.mid_block.attentions = nn.ModuleList([Attention(mid_c, hd or mid_c, attn_groups, eps, scale)])
        self.up_blocks, rev = nn.ModuleList(), list(reversed(boc))
        cout = rev[0]
        for i, kind in enumerate(c["up_block_types"]):
            prev, cout, cskip = cout, rev[i], rev[min(i + 1, len(boc) - 1)]
            n = c["layers_per_block"] + 1
            res = [ResnetBlock2D((prev if j == 0 else cout) + (cskip if j == n - 1 else cout), cout, temb, groups, eps)
                   for j in range(n)]
            att = [Attention(cout, hd or cout, groups, eps) for _ in res] if kind.startswith("Attn") else []
            last = i == len(boc) - 1
            self.up_blocks.append(_Block(res, att, None if last else _Resample(cout, False)))
        self.conv_norm_out = GroupNorm32(groups, boc[0], eps=eps)
        self.conv_out = Conv2d(boc[0], c["out_channels"], 3, padding=1)

    def set_dtype(self, dtype: torch.dtype) -> None:
        set_torso_dtype([self.conv_in, self.down_blocks, self.mid_block, self.up_blocks], dtype)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        c = self.config
        u = 2 * x - 1.0 if c["center_input_sample"] else x
        t = sinusoidal_embedding(tau, c["block_out_channels"][0], shift=c["freq_shift"], sin_first=True,
                                 rate_first=False)
        if c["flip_sin_to_cos"]:
            t = torch.cat([t[:, t.shape[1] // 2:], t[:, :t.shape[1] // 2]], dim=1)
        temb = self.time_embedding.linear_2(F.silu(self.time_embedding.linear_1(t)))
        h = self.conv_in(u)
        skips = [h]
        for block in self.down_blocks:
            h, out = block.down(h, temb)
            skips += out
        h = self.mid_block.resnets[0](h, temb)
        h = self.mid_block.resnets[1](self.mid_block.attentions[0](h), temb)
        for block in self.up_blocks:
            h = block.up(h, skips, temb)
        h = h.to(x.dtype)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def legacy_key_map(state_dict: dict) -> dict:
    """Rename pre-0.14 attention keys (query/key/value/proj_attn) to to_q/to_k/to_v/to_out.0; drop the duplicate
    `Conv2d_0` alias some resamplers serialise next to `conv`."""
    out = {}
    for k, v in state_dict.items():
        m = re.match(r"(.*attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$", k)
        if m:
            k = f"{m[1]}.{_LEGACY[m[2]]}.{m[3]}"
            if v.dim() == 4:  # very old files stored the projections as 1×1 convs
                v = v[:, :, 0, 0]
        elif re.search(r"(down|up)samplers\.0\.Conv2d_0\.", k):
            alias = k.replace("Conv2d_0", "conv")
            if alias in state_dict:
                continue
            k = alias
        out[k] = v
    return out
