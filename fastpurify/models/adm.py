"""guided-diffusion's ADM UNet (`UNetModel`), as used by `256x256_diffusion_uncond.pt` (docs/CHECKPOINTS.md §3).

Same key layout as `openai/guided-diffusion:guided_diffusion/unet.py` (time_embed.{0,2}, input_blocks.i.j,
middle_block.j, output_blocks.i.j, out.{0,2}), unconditional, 2-D.  Supported: scale-shift norm, up/down-sampling
residual blocks or conv resampling, legacy multi-head attention (heads split before q/k/v) with a fixed head width.
Learned σ: out_channels = 6 holds ε in [:3] and the variance interpolation v in [3:].

fp16: `set_dtype(torch.float16)` reproduces `convert_to_fp16()` exactly — the convs of input_blocks, middle_block and
output_blocks in fp16; time_embed, the emb_layers Linears and `out` in fp32; GroupNorm32 computing in fp32.

Shapes: x (B, 3, H, W) in [−1, 1], τ (B,) DDPM index (float ok) → (B, out_channels, H, W).  Dropout omitted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttentionBase, Conv1d, Conv2d, GroupNorm32, Linear, attention, set_torso_dtype, sinusoidal_embedding
from .layers import Upsample

# guided-diffusion README "256x256 model (unconditional)" = NVlabs/DiffPure:configs/imagenet.yml.
ADM_256_UNCOND = dict(image_size=256, in_channels=3, model_channels=256, out_channels=6, num_res_blocks=2,
                      attention_resolutions=(32, 16, 8), channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
                      use_scale_shift_norm=True, resblock_updown=True)


def _gn(c: int) -> GroupNorm32:
    return GroupNorm32(32, c)


class ResBlock(nn.Module):
    """ADM ResBlock.  Keys: in_layers.{0 GN, 2 conv}, emb_layers.1, out_layers.{0 GN, 3 conv}, skip_connection."""

    def __init__(self, cin: int, emb_dim: int, cout: int | None = None, scale_shift: bool = True,
                 up: bool = False, down: bool = False):
        super().__init__()
        cout = cout or cin
        self.in_layers = nn.Sequential(_gn(cin), nn.SiLU(), Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), Linear(emb_dim, 2 * cout if scale_shift else cout))
        self.out_layers = nn.Sequential(_gn(cout), nn.SiLU(), nn.Identity(), Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cout == cin else Conv2d(cin, cout, 1)
        self.scale_shift, self.up, self.down = scale_shift, up, down

    def _resample(self, x):
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x, emb):
        # Resampling happens between the activation and the conv of in_layers, on both paths.
        h = self.in_layers[2](self._resample(self.in_layers[1](self.in_layers[0](x))))
        x = self._resample(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[3](self.out_layers[1](h))
        else:
            h = self.out_layers[3](self.out_layers[1](self.out_layers[0](h + e)))
        return self.skip_connection(x) + h


class AttentionBlock(AttentionBase):
    """ADM AttentionBlock with QKVAttentionLegacy: qkv (B, 3C, T) is split into heads first, then into q, k, v."""

    def __init__(self, c: int, num_head_channels: int):
        super().__init__()
        if c % num_head_channels:
            raise ValueError(f"channels {c} not divisible by num_head_channels {num_head_channels}")
        self.heads = c // num_head_channels
        self.norm = _gn(c)
        self.qkv = Conv1d(c, 3 * c, 1)
        self.proj_out = Conv1d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W)
        qkv = self.qkv(self.norm(x)).reshape(B, self.heads, 3 * C // self.heads, H * W)
        q, k, v = (t.transpose(-1, -2) for t in qkv.chunk(3, dim=2))  # (B, heads, T, d)
        # 'math' = QKVAttentionLegacy's arithmetic (q, k scaled by d^−¼ each, multiplied in the torso dtype).
        a = attention(q, k, v, self.attn_backend, split_scale=True).transpose(-1, -2).reshape(B, C, H * W)
        return (x + self.proj_out(a)).reshape(B, C, H, W)


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.op = Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class EmbedSequential(nn.ModuleList):
    """guided-diffusion's TimestepEmbedSequential: residual blocks get the embedding, other layers do not."""

    def forward(self, h, emb):
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class ADMUNet(nn.Module):
    """guided-diffusion UNetModel (unconditional).  attention_resolutions are image resolutions (e.g. 32, 16, 8)."""

    def __init__(self, image_size: int = 256, in_channels: int = 3, model_channels: int = 256, out_channels: int = 6,
                 num_res_blocks: int = 2, attention_resolutions=(32, 16, 8), channel_mult=(1, 1, 2, 2, 4, 4),
                 num_head_channels: int = 64, use_scale_shift_norm: bool = True, resblock_updown: bool = True):
        super().__init__()
        self.config = dict(image_size=image_size, in_channels=in_channels, model_channels=model_channels,
                           out_channels=out_channels, num_res_blocks=num_res_blocks,
                           attention_resolutions=tuple(attention_resolutions), channel_mult=tuple(channel_mult),
                           num_head_channels=num_head_channels, use_scale_shift_norm=use_scale_shift_norm,
                           resblock_updown=resblock_updown)
        self.model_channels = model_channels
        attn_ds = {image_size // r for r in attention_resolutions}  # create_model: ds = image_size // res
        emb = 4 * model_channels
        ss = use_scale_shift_norm

        def res(cin, cout=None, **kw):
            return ResBlock(cin, emb, cout, ss, **kw)

        self.time_embed = nn.Sequential(Linear(model_channels, emb), nn.SiLU(), Linear(emb, emb))
        ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbedSequential([Conv2d(in_channels, ch, 3, padding=1)])])
        chans, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, num_head_channels))
                self.input_blocks.append(EmbedSequential(layers))
                chans.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(EmbedSequential([res(ch, down=True) if resblock_updown else Downsample(ch)]))
                chans.append(ch)
                ds *= 2
        self.middle_block = EmbedSequential([res(ch), AttentionBlock(ch, num_head_channels), res(ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [res(ch + chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attn_ds:
                    layers.append(AttentionBlock(ch, num_head_channels))
                if level and i == num_res_blocks:
                    layers.append(res(ch, up=True) if resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(layers))
        self.out = nn.Sequential(_gn(ch), nn.SiLU(), Conv2d(ch, out_channels, 3, padding=1))

    def set_dtype(self, dtype: torch.dtype) -> None:
        """dtype fp16 = guided-diffusion's convert_to_fp16(); fp32 = convert_to_fp32()."""
        set_torso_dtype([self.input_blocks, self.middle_block, self.output_blocks], dtype)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(sinusoidal_embedding(tau, self.model_channels, shift=0, sin_first=False,
                                                       rate_first=False))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h.to(x.dtype))
