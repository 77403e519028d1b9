"""NCSN++ in the score_sde "DDPM++ deep, continuous VP" configuration (DiffPure's CIFAR-10 `checkpoint_8.pth`).

A compact port of `score_sde/models/ncsnpp.py` for the configuration in docs/CHECKPOINTS.md §2 only: positional time
embedding, BigGAN residual blocks with naive (non-FIR) resampling, skip_rescale, no progressive paths, centered input.
Every layer sits in one `all_modules` ModuleList, in the original order, so both the named keys
(`all_modules.N.*`) and `parameters()` order — which the positional EMA `shadow_params` list relies on — match.

Shapes: x (B, 3, H, W) in [−1, 1], τ (B,) = 999·s (float) → ε (B, 3, H, W).  Dropout is omitted (inference only:
outputs never depend on train/eval mode).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import NIN, AttentionBase, Conv2d, GroupNorm32, Linear, attention, set_torso_dtype, sinusoidal_embedding

# NVlabs/DiffPure:configs/cifar10.yml (score_sde vp/cifar10_ddpmpp_deep_continuous).
NCSNPP_CIFAR10 = dict(image_size=32, channels=3, nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_resolutions=(16,))

# skip_rescale divides by √2 (the original's arithmetic; multiplying by 1/√2 rounds differently).
_SQRT2 = math.sqrt(2.0)


def _gn(c: int) -> GroupNorm32:
    return GroupNorm32(min(c // 4, 32), c, eps=1e-6)


class ResnetBlockBigGAN(nn.Module):
    """score_sde ResnetBlockBigGANpp (fir=False, skip_rescale=True).  Registration order = parameter order."""

    def __init__(self, cin: int, cout: int | None = None, temb_dim: int = 512, up: bool = False, down: bool = False):
        super().__init__()
        cout = cout or cin
        self.GroupNorm_0 = _gn(cin)
        self.Conv_0 = Conv2d(cin, cout, 3, padding=1)
        self.Dense_0 = Linear(temb_dim, cout)
        self.GroupNorm_1 = _gn(cout)
        self.Conv_1 = Conv2d(cout, cout, 3, padding=1)
        self.Conv_2 = Conv2d(cin, cout, 1) if (cin != cout or up or down) else None
        self.up, self.down = up, down

    def _resample(self, x):
        if self.up:  # naive_upsample_2d = nearest ×2
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:  # naive_downsample_2d: the mean over each 2×2 block, summed in the original's order
            B, C, H, W = x.shape
            return x.reshape(B, C, H // 2, 2, W // 2, 2).mean(dim=(3, 5))
        return x

    def forward(self, x, temb):
        h = F.silu(self.GroupNorm_0(x))
        h, x = self._resample(h), self._resample(x)
        h = self.Conv_0(h)
        h = h + self.Dense_0(F.silu(temb))[:, :, None, None].to(h.dtype)
        h = self.Conv_1(F.silu(self.GroupNorm_1(h)))
        if self.Conv_2 is not None:
            x = self.Conv_2(x)
        return (x + h) / _SQRT2


class AttnBlockpp(AttentionBase):
    """score_sde AttnBlockpp: single-head attention over H·W positions, NIN projections, skip_rescale."""

    def __init__(self, c: int):
        super().__init__()
        self.GroupNorm_0 = _gn(c)
        self.NIN_0, self.NIN_1, self.NIN_2, self.NIN_3 = NIN(c, c), NIN(c, c), NIN(c, c), NIN(c, c)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.GroupNorm_0(x)
        # (B, C, H, W) → (B, 1, HW, C): one head of width C, scale C^−½ as in the original.
        q, k, v = (m(h).reshape(B, 1, C, H * W).transpose(-1, -2) for m in (self.NIN_0, self.NIN_1, self.NIN_2))
        a = attention(q, k, v, self.attn_backend).transpose(-1, -2).reshape(B, C, H, W)
        return (x + self.NIN_3(a)) / _SQRT2


class NCSNpp(nn.Module):
    """score_sde NCSN++ (DDPM++ deep continuous config).  See the module docstring."""

    def __init__(self, image_size: int = 32, channels: int = 3, nf: int = 128, ch_mult=(1, 2, 2, 2),
                 num_res_blocks: int = 8, attn_resolutions=(16,)):
        super().__init__()
        self.config = dict(image_size=image_size, channels=channels, nf=nf, ch_mult=tuple(ch_mult),
                           num_res_blocks=num_res_blocks, attn_resolutions=tuple(attn_resolutions))
        self.nf, self.num_res_blocks, self.n_levels = nf, num_res_blocks, len(ch_mult)
        res = [image_size // 2 ** i for i in range(len(ch_mult))]
        self.attn_levels = [r in attn_resolutions for r in res]
        temb = 4 * nf
        mods: list[nn.Module] = [Linear(nf, temb), Linear(temb, temb), Conv2d(channels, nf, 3, padding=1)]
        # Downsampling path: resblocks (+ attention) per level, then a down-resblock between levels.
        hs_c, cin = [nf], nf
        for lvl, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                mods.append(ResnetBlockBigGAN(cin, nf * mult, temb))
                cin = nf * mult
                if self.attn_levels[lvl]:
                    mods.append(AttnBlockpp(cin))
                hs_c.append(cin)
            if lvl != len(ch_mult) - 1:
                mods.append(ResnetBlockBigGAN(cin, temb_dim=temb, down=True))
                hs_c.append(cin)
        mods += [ResnetBlockBigGAN(cin, temb_dim=temb), AttnBlockpp(cin), ResnetBlockBigGAN(cin, temb_dim=temb)]
        # Upsampling path: num_res_blocks + 1 resblocks per level (consuming skips), one attention, an up-resblock.
        for lvl in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks + 1):
                mods.append(ResnetBlockBigGAN(cin + hs_c.pop(), nf * ch_mult[lvl], temb))
                cin = nf * ch_mult[lvl]
            if self.attn_levels[lvl]:
                mods.append(AttnBlockpp(cin))
            if lvl != 0:
                mods.append(ResnetBlockBigGAN(cin, temb_dim=temb, up=True))
        assert not hs_c
        mods += [_gn(cin), Conv2d(cin, channels, 3, padding=1)]
        self.all_modules = nn.ModuleList(mods)

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Torso (first conv … last up-block) in `dtype`; time MLP, final norm and output conv stay fp32."""
        set_torso_dtype(list(self.all_modules[2:-2]), dtype)

    def forward(self, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        m = iter(self.all_modules)
        # Time embedding: score_sde get_timestep_embedding (shift 1, [sin, cos]) → Linear → SiLU → Linear.
        temb = next(m)(sinusoidal_embedding(tau, self.nf, shift=1, sin_first=True, rate_first=True))
        temb = next(m)(F.silu(temb))
        hs = [next(m)(x)]
        for lvl in range(self.n_levels):
            for _ in range(self.num_res_blocks):
                h = next(m)(hs[-1], temb)
                if self.attn_levels[lvl]:
                    h = next(m)(h)
                hs.append(h)
            if lvl != self.n_levels - 1:
                hs.append(next(m)(hs[-1], temb))
        h = next(m)(hs[-1], temb)
        h = next(m)(h)
        h = next(m)(h, temb)
        for lvl in reversed(range(self.n_levels)):
            for _ in range(self.num_res_blocks + 1):
                h = next(m)(torch.cat([h, hs.pop().to(h.dtype)], dim=1), temb)
            if self.attn_levels[lvl]:
                h = next(m)(h)
            if lvl != 0:
                h = next(m)(h, temb)
        h = h.to(x.dtype)  # the head runs in the input dtype (fp32), as ADM's does
        h = next(m)(h)
        return next(m)(F.silu(h))
