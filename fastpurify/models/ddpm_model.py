"""The DDPM `Model` UNet (Ho et al.; pesser/pytorch_diffusion, SDEdit, DiffPure's `ddpm/unet_ddpm.py`).

Key layout (docs/CHECKPOINTS.md §4): temb.dense.{0,1}, conv_in, down.L.{block.B, attn.B, downsample.conv}, mid.{block_1,
attn_1, block_2}, up.L.{block.B, attn.B, upsample.conv}, norm_out, conv_out.  `up.L` is indexed by resolution level
(the original builds it with insert(0, …)), so up.0 is the last stage executed.

Shapes: x (B, C, R, R) in [−1, 1], τ (B,) DDPM index → ε (B, out_ch, R, R).  Dropout omitted (inference only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AttentionBase, Conv2d, GroupNorm32, Linear, attention, set_torso_dtype, sinusoidal_embedding
from .layers import Upsample

# pesser/pytorch_diffusion `ema_cifar10` and SDEdit / DiffPure `celeba_hq.ckpt` (docs/CHECKPOINTS.md §4).
DDPM_CIFAR10 = dict(resolution=32, in_channels=3, out_ch=3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                    attn_resolutions=(16,))
DDPM_CELEBAHQ = dict(resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                     attn_resolutions=(16,))


def _gn(c: int) -> GroupNorm32:
    return GroupNorm32(32, c, eps=1e-6)


def _swish(x):
    """The original's nonlinearity, x·σ(x), written out: F.silu rounds differently in the last bit."""
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.norm1, self.conv1 = _gn(cin), Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = Linear(temb, cout)
        self.norm2, self.conv2 = _gn(cout), Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, temb):
        h = self.conv1(_swish(self.norm1(x)))
        h = h + self.temb_proj(_swish(temb))[:, :, None, None].to(h.dtype)
        h = self.conv2(_swish(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(AttentionBase):
    """Single-head spatial attention with 1×1-conv q, k, v, proj_out; scale C^−½."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _gn(c)
        self.q, self.k, self.v, self.proj_out = (Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (m(h).reshape(B, 1, C, H * W).transpose(-1, -2) for m in (self.q, self.k, self.v))
        a = attention(q, k, v, self.attn_backend).transpose(-1, -2).reshape(B, C, H, W)
        # Contiguous like the original's bmm output: the 1×1 conv's algorithm (and rounding) follows the layout.
        return x + self.proj_out(a.contiguous())


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric "SAME" padding of the TF original


class DDPMModel(nn.Module):
    """The DDPM `Model` (resamp_with_conv=True).  See the module docstring."""

    def __init__(self, resolution: int = 32, in_channels: int = 3, out_ch: int = 3, ch: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 2, attn_resolutions=(16,)):
        super().__init__()
        self.config = dict(resolution=resolution, in_channels=in_channels, out_ch=out_ch, ch=ch, ch_mult=tuple(ch_mult),
                           num_res_blocks=num_res_blocks, attn_resolutions=tuple(attn_resolutions))
        self.ch, self.num_res_blocks, self.n_levels = ch, num_res_blocks, len(ch_mult)
        temb = 4 * ch
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([Linear(ch, temb), Linear(temb, temb)])
        self.conv_in = Conv2d(in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(ch_mult)
        res, cin = resolution, ch
        self.down = nn.ModuleList()
        for lvl, mult in enumerate(ch_mult):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            cin = ch * in_mult[lvl]
            for _ in range(num_res_blocks):
                stage.block.append(ResnetBlock(cin, ch * mult, temb))
                cin = ch * mult
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(cin))
            if lvl != len(ch_mult) - 1:
                stage.downsample = Downsample(cin)
                res //= 2
            self.down.append(stage)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResnetBlock(cin, cin, temb), AttnBlock(cin), \
            ResnetBlock(cin, cin, temb)
        ups = []
        for lvl in reversed(range(len(ch_mult))):
            stage = nn.Module()
            stage.block, stage.attn = nn.ModuleList(), nn.ModuleList()
            for b in range(num_res_blocks + 1):
                skip = ch * (in_mult[lvl] if b == num_res_blocks else ch_mult[lvl])
                stage.block.append(ResnetBlock(cin + skip, ch * ch_mult[lvl], temb))
                cin = ch * ch_mult[lvl]
                if res in attn_resolutions:
                    stage.attn.append(AttnBlock(cin))
            if lvl != 0:
                stage.upsample = Upsample(cin)
                res *= 2
            ups.insert(0, stage)  # indexed by level, like the original
        self.up = nn.ModuleList(ups)
        self.norm_out = _gn(cin)
        self.conv_out = Conv2d(cin, out_ch, 3, padding=1)

    def set_dtype(self, dtype: torch.dtype) -> None:
        set_torso_dtype([self.conv_in, self.down, self.mid, self.up], dtype)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        temb = self.temb.dense[0](sinusoidal_embedding(tau, self.ch, shift=1, sin_first=True, rate_first=True))
        temb = self.temb.dense[1](_swish(temb))
        hs = [self.conv_in(x)]
        for lvl, stage in enumerate(self.down):
            for b in range(self.num_res_blocks):
                h = stage.block[b](hs[-1], temb)
                if len(stage.attn):
                    h = stage.attn[b](h)
                hs.append(h)
            if lvl != self.n_levels - 1:
                hs.append(stage.downsample(hs[-1]))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)
        for lvl in reversed(range(self.n_levels)):
            stage = self.up[lvl]
            for b in range(self.num_res_blocks + 1):
                h = stage.block[b](torch.cat([h, hs.pop()], dim=1), temb)
                if len(stage.attn):
                    h = stage.attn[b](h)
            if lvl != 0:
                h = stage.upsample(h)
        h = h.to(x.dtype)
        return self.conv_out(_swish(self.norm_out(h)))
