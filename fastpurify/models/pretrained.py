"""The denoiser returned by `load_diffusion`, and the ImageNet resize wrapper (docs/METHODS.md §1.1, §1.4).

`PretrainedDiffusion` is an `EpsDiffusion` over a ported UNet that adds:
  - learned σ: ε = the first `channels` output channels, `output()` keeps all of them (ADM: v = out[:, 3:]);
  - the time rule of the code that published the weights (`index_at_time`);
  - inference options: torso precision (fp16 / bf16, norms in fp32), channels_last, attention backend;
  - `meta`: format, config, parameter count, sha256, EMA info — what reports record.
Outputs are always fp32 and contiguous in the standard layout, whatever the options, so samplers never notice.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..schedules import get_vpsde_schedule
from .diffusion import EpsDiffusion
from .layers import set_attention_backend

INDEX_AT_TIME = ("shifted", "floor")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ValueError(f"dtype must be one of {list(_DTYPES)} (or the torch dtypes), got {dtype!r}")


class PretrainedDiffusion(EpsDiffusion):
    """An EpsDiffusion over a pretrained UNet `net(u, τ) → (B, C_out, H, W)`, C_out ≥ channels.

    index_at_time (index-trained nets driven at continuous s, i.e. by the VP-SDE sampler):
      'shifted' — τ = 1000·s − 1 (EpsDiffusion's rule: ᾱ(s) ≈ ᾱ_{1000s−1});
      'floor'   — τ = ⌊1000·s⌋, what DiffPure passes to the guided-diffusion ADM (`RevVPSDE._scale_timesteps`).
    """

    def __init__(self, net: nn.Module, *, image_size: int, channels: int, time_input: str,
                 index_at_time: str = "shifted", name: str = "pretrained", meta: dict | None = None):
        super().__init__(net, image_size=image_size, channels=channels, time_input=time_input, name=name)
        if index_at_time not in INDEX_AT_TIME:
            raise ValueError(f"index_at_time must be one of {INDEX_AT_TIME}, got {index_at_time!r}")
        self.index_at_time = index_at_time
        self.meta = dict(meta or {})
        self.channels_last = False
        self.meta.setdefault("dtype", "fp32")
        self.meta.setdefault("attention", "sdpa")

    # ---- options
    def set_precision(self, dtype) -> "PretrainedDiffusion":
        """Torso convs/attention in fp16 or bf16 (norms compute in fp32; time MLP and output head stay fp32).
        For ADM, fp16 is exactly guided-diffusion's convert_to_fp16()."""
        dt = parse_dtype(dtype)
        self.net.set_dtype(dt)
        self.meta["dtype"] = {v: k for k, v in _DTYPES.items()}[dt]
        return self

    def set_channels_last(self, enabled: bool = True) -> "PretrainedDiffusion":
        self.net.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.channels_last = enabled
        return self

    def set_attention(self, backend: str) -> "PretrainedDiffusion":
        """'sdpa' (default), 'math' (each original's explicit softmax arithmetic; for ADM guided-diffusion's
        QKVAttentionLegacy, bit-identical in fp16), 'xformers' (if installed; else why not)."""
        set_attention_backend(self.net, backend)
        self.meta["attention"] = backend
        return self

    # ---- evaluation
    def output(self, u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """The full network output (B, C_out, H, W) in fp32: ε, then the learned-variance channels if any."""
        x = u.contiguous(memory_format=torch.channels_last) if self.channels_last else u
        return self.net(x, tau).to(u.dtype).contiguous()

    def forward(self, u: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        out = self.output(u, tau)
        return out if out.shape[1] == self.channels else out[:, :self.channels].contiguous()

    def tau_at_time(self, s: float) -> float:
        if self.time_input == "continuous":
            return 999.0 * s  # score_sde get_score_fn: labels = t · (N − 1)
        if self.index_at_time == "floor":
            return float(math.floor(1000.0 * s + 1e-6))  # + 1e-6: grid values like 0.147 are 0.14699999…
        return max(1000.0 * s - 1.0, 0.0)

    def score_at_time(self, u: torch.Tensor, s: float) -> torch.Tensor:
        """∇_u log p_s(u) ≈ −ε/σ(s), σ(s) the VP-SDE marginal std (score_sde get_score_fn, continuous VP)."""
        return -self.eps_at_time(u, s) / get_vpsde_schedule().sigma(s)

    def extra_repr(self) -> str:
        m = self.meta
        return (f"kind={m.get('kind')!r}, image_size={self.image_size}, time_input={self.time_input!r}, "
                f"params={m.get('params')}, dtype={m.get('dtype')}, attention={m.get('attention')}")
