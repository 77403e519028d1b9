"""Tiny same-architecture models with random weights, written in each original on-disk layout (docs/CHECKPOINTS.md).

Random weights replace every zero-initialised layer (ADM's out conv, NCSN++'s NIN_3, ...): with the published
inits those layers output zeros and a test comparing two forwards could not fail.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch
from torch import nn

from fastpurify.models.adm import ADMUNet
from fastpurify.models.classifiers import DMWideResNet, WideResNet
from fastpurify.models.ddpm_model import DDPMModel
from fastpurify.models.diffusers_unet import DiffusersUNet2D
from fastpurify.models.ncsnpp import NCSNpp

TINY_NCSNPP = dict(image_size=8, channels=3, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
TINY_ADM = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                attention_resolutions=(8,), channel_mult=(1, 2), num_head_channels=16, use_scale_shift_norm=True,
                resblock_updown=True)
TINY_DDPM = dict(resolution=8, in_channels=3, out_ch=3, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
# The layout of google/ddpm-cifar10-32's config.json, shrunk (attention at the second level, DDPM-style embedding).
TINY_DIFFUSERS = {"_class_name": "UNet2DModel", "_diffusers_version": "0.42.1", "act_fn": "silu",
                  "attention_head_dim": None, "block_out_channels": [32, 64], "center_input_sample": False,
                  "down_block_types": ["DownBlock2D", "AttnDownBlock2D"], "downsample_padding": 0,
                  "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 1,
                  "mid_block_scale_factor": 1, "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3,
                  "sample_size": 8, "time_embedding_type": "positional",
                  "up_block_types": ["AttnUpBlock2D", "UpBlock2D"]}


def randomize_(net: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic, non-trivial weights: fan-in-scaled normals for weights, small normals for 1-D tensors."""
    # Each tensor's values depend only on (seed, its name, its shape): refactors that keep the keys keep the weights.
    def gen(name):
        return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))

    with torch.no_grad():
        for mname, mod in net.named_modules():
            for name, p in mod.named_parameters(recurse=False):
                g = gen(f"{mname}.{name}")
                if isinstance(mod, (nn.GroupNorm, nn.BatchNorm2d)) and name == "weight":
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                elif p.dim() > 1:
                    fan_in = p.shape[0] if name == "W" else p[0].numel()  # NIN's W is (in, out)
                    p.copy_(torch.randn(p.shape, generator=g) * (0.8 / fan_in ** 0.5))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in net.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen(name)) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen(name)) + 0.5)
    return net.eval().requires_grad_(False)


def tiny(kind: str, seed: int = 0) -> nn.Module:
    cls = {"ncsnpp": NCSNpp, "adm": ADMUNet, "ddpm": DDPMModel}.get(kind)
    if kind == "diffusers":
        return randomize_(DiffusersUNet2D(TINY_DIFFUSERS), seed)
    cfg = {"ncsnpp": TINY_NCSNPP, "adm": TINY_ADM, "ddpm": TINY_DDPM}[kind]
    return randomize_(cls(**cfg), seed)


# ---------------------------------------------------------------------------------------------- original layouts
def save_score_sde(net: NCSNpp, path: Path, raw: NCSNpp | None = None) -> Path:
    """score_sde's training-state dict: 'model' is the DataParallel state_dict (`module.` prefix, `sigmas` buffer
    first) of the raw weights, 'ema' holds the EMA weights as an unnamed list in parameters() order."""
    raw = raw if raw is not None else net
    model = {"module.sigmas": torch.linspace(0.01, 50.0, 1000)}
    model.update({f"module.{k}": v.clone() for k, v in raw.state_dict().items()})
    opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
           "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0, "params": [0]}]}
    ema = {"decay": 0.9999, "num_updates": 950001, "shadow_params": [p.detach().clone() for p in net.parameters()]}
    torch.save({"optimizer": opt, "model": model, "ema": ema, "step": 950001}, path)
    return path


def save_state_dict(net: nn.Module, path: Path, prefix: str = "") -> Path:
    """ADM / pesser DDPM / classifiers: a plain state_dict (optionally DataParallel-prefixed)."""
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, path)
    return path


def save_diffusers_dir(net: DiffusersUNet2D, config: dict, path: Path, legacy: bool = False) -> Path:
    """A diffusers model directory: config.json + diffusion_pytorch_model.safetensors.  legacy=True writes the
    pre-0.14 attention names (query/key/value/proj_attn)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    if legacy:
        ren = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
        out = {}
        for k, v in sd.items():
            for new, old in ren.items():
                k = k.replace(f".{new}.", f".{old}.")
            out[k] = v
        sd = out
    save_file(sd, str(path / "diffusion_pytorch_model.safetensors"))
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return path


def tiny_classifier(kind: str, seed: int = 0) -> nn.Module:
    net = WideResNet(depth=10, widen_factor=2) if kind == "wrn" else DMWideResNet(depth=10, width=2)
    return randomize_(net, seed)
