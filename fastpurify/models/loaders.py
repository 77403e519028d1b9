"""Safe loading of the public diffusion checkpoints and classifiers (docs/CHECKPOINTS.md §9).

    model = fastpurify.load_diffusion("checkpoint_8.pth")            # → PretrainedDiffusion, ready for the samplers
    clf = fastpurify.load_classifier("Standard.pt")                   # → eval-mode nn.Module taking x ∈ [0, 1]

Nothing here executes pickled code: `.pt/.pth/.ckpt/.bin` go through `torch.load(weights_only=True)`, `.safetensors`
through safetensors.  Loads are strict; a mismatch raises `CheckpointError` naming the missing, unexpected and
wrongly shaped keys.  Formats (`kind`), detected from the content, never from the file name:

  score_sde   {'model', 'ema': {'shadow_params': [...]}, 'optimizer', 'step'}; the EMA list is applied positionally
              in parameters() order (DiffPure's ema.copy_to), cross-checked against the named 'model' keys.
  ncsnpp      a named NCSN++ state_dict (all_modules.N.*), e.g. written by `save_pretrained`.
  adm         guided-diffusion UNetModel state_dict (input_blocks.0.0.weight, ...).
  ddpm        DDPM `Model` state_dict (temb.dense.0.weight, ...); Lee & Kim's `[state_dict, ...]` list too.
  diffusers   a directory with config.json + diffusion_pytorch_model.safetensors (or .bin).
Prefixes `module.` (DataParallel) are stripped.  Architecture hyper-parameters are inferred from the key shapes where
the file determines them; the rest are keyword arguments.  Where a setting the file cannot determine is taken from
the public models (an ADM's head width: 64), the loaded model's `meta["assumed"]` names it and why, and a warning
says so; sweeps refuse such an assumption unless the config gives the value.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .adm import ADM_256_UNCOND, ADMUNet

# Reading and checking files (shared with classifier loading), re-exported: callers import them from here.
from .checkpoint_files import (  # noqa: F401
    CLASSIFIER_KINDS,
    DIFFUSION_KINDS,
    CheckpointError,
    build_verified,
    checked_sha256,
    classifier_kind,
    count_indices,
    detect_kind,
    read_file,
    sha256_of,
    strip_prefixes,
    verify_state_dict,
)
from .classifier_loading import load_classifier  # noqa: F401  (fastpurify.models.loaders.load_classifier)
from .ddpm_model import DDPMModel
from .diffusers_unet import DiffusersUNet2D, legacy_key_map
from .fast import SpeedOptions, precision_support
from .ncsnpp import NCSNPP_CIFAR10, NCSNpp
from .pretrained import PretrainedDiffusion, parse_dtype


# ---------------------------------------------------------------------------------------------- config inference
def _ncsnpp_config(sd: dict, image_size: int) -> dict:
    """nf, ch_mult, num_res_blocks and attention levels from a named NCSN++ state_dict (the 'model' keys)."""
    n = count_indices(sd, r"all_modules\.(\d+)\.")
    nf = sd["all_modules.0.weight"].shape[1]

    def entry(i):  # ('attn',) or ('res', cin, cout, is_resampling_block)
        p = f"all_modules.{i}."
        if p + "NIN_0.W" in sd:
            return ("attn",)
        cin, cout = sd[p + "GroupNorm_0.weight"].shape[0], sd[p + "Conv_0.weight"].shape[0]
        return ("res", cin, cout, p + "Conv_2.weight" in sd and cin == cout)

    i, mults, attn_levels, nrb = 3, [], [], None
    while i < n - 2:
        blocks, has_attn = 0, False
        while i < n - 2 and entry(i)[0] == "res" and not entry(i)[3] and (nrb is None or blocks < nrb):
            cout = entry(i)[2]
            blocks, i = blocks + 1, i + 1
            if entry(i)[0] == "attn":
                has_attn, i = True, i + 1
        nrb = nrb or blocks
        mults.append(cout // nf)
        attn_levels.append(has_attn)
        if not entry(i)[0] == "res" or not entry(i)[3]:
            break  # no down-resblock: that was the last level; the middle block follows
        i += 1
    return dict(image_size=image_size, channels=sd["all_modules.2.weight"].shape[1], nf=nf, ch_mult=tuple(mults),
                num_res_blocks=nrb, attn_resolutions=tuple(image_size >> lvl for lvl, a in enumerate(attn_levels) if a))


def _adm_config(sd: dict, image_size: int | None, num_head_channels: int) -> dict:
    mc = sd["input_blocks.0.0.weight"].shape[0]
    n_out = count_indices(sd, r"output_blocks\.(\d+)\.")

    def is_up(j):  # the last layer of an output block is an up-resblock or an Upsample conv
        last = max(int(m[1]) for k in sd if (m := re.match(rf"output_blocks\.{j}\.(\d+)\.", k)))
        p = f"output_blocks.{j}.{last}."
        return last > 0 and (p + "conv.weight" in sd or p + "in_layers.0.weight" in sd), p + "in_layers.0.weight" in sd

    nrb = next((j for j in range(n_out) if is_up(j)[0]), n_out - 1)
    levels = n_out // (nrb + 1)
    first = [1 + lvl * (nrb + 1) for lvl in range(levels)]  # input_blocks index of each level's first resblock
    mult = tuple(sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0] // mc for i in first)
    attn_ds = [2 ** lvl for lvl, i in enumerate(first) if f"input_blocks.{i}.1.qkv.weight" in sd]
    if image_size is None:  # guided-diffusion create_model's default channel_mult per image size
        image_size = {(1, 1, 2, 2, 4, 4): 256, (1, 1, 2, 3, 4): 128, (1, 2, 3, 4): 64}.get(mult)
        if image_size is None:
            raise CheckpointError(f"ADM channel_mult {mult} does not determine the image size; give image_size "
                                  "(load_diffusion keyword; in a sweep: [model.diffusion_config] image_size = …)")
    emb_out = sd["input_blocks.1.0.emb_layers.1.weight"].shape[0]
    return dict(image_size=image_size, in_channels=sd["input_blocks.0.0.weight"].shape[1], model_channels=mc,
                out_channels=sd["out.2.weight"].shape[0], num_res_blocks=nrb,
                attention_resolutions=tuple(image_size // d for d in attn_ds), channel_mult=mult,
                num_head_channels=num_head_channels,
                use_scale_shift_norm=emb_out == 2 * sd["input_blocks.1.0.out_layers.3.weight"].shape[0],
                resblock_updown=levels > 1 and is_up(nrb)[1])


def _ddpm_config(sd: dict, resolution: int | None) -> dict:
    ch, levels = sd["conv_in.weight"].shape[0], count_indices(sd, r"down\.(\d+)\.")
    if resolution is None:  # the public DDPM `Model` configs: CIFAR-10 (4 levels, 32²), CelebA-HQ / LSUN (6, 256²)
        resolution = {4: 32, 6: 256}.get(levels)
        if resolution is None:
            raise CheckpointError(f"a DDPM Model with {levels} levels does not determine the resolution; "
                                  "pass resolution=")
    return dict(resolution=resolution, in_channels=sd["conv_in.weight"].shape[1], out_ch=sd["conv_out.weight"].shape[0],
                ch=ch, ch_mult=tuple(sd[f"down.{lvl}.block.0.conv1.weight"].shape[0] // ch for lvl in range(levels)),
                num_res_blocks=count_indices(sd, r"down\.0\.block\.(\d+)\."),
                attn_resolutions=tuple(resolution >> lvl for lvl in range(levels)
                                       if f"down.{lvl}.attn.0.norm.weight" in sd))


# ---------------------------------------------------------------------------------------------- diffusion
_NCSNPP_SIZE = ("the file's shapes do not determine the NCSN++ image size; assumed 32, the public CIFAR-10 "
                "checkpoint's")


def _score_sde(ckpt: dict, overrides: dict, ema: bool, what: str, assumed: dict) -> tuple[nn.Module, dict]:
    if "image_size" not in overrides:
        assumed["image_size"] = _NCSNPP_SIZE
    model_sd = strip_prefixes(dict(ckpt.get("model") or {}))
    names_in_file = [k for k in model_sd if k != "sigmas"]  # `sigmas` is a buffer the positional model never uses
    cfg = _infer(_ncsnpp_config, model_sd, overrides.pop("image_size", 32), what=f"{what} ['model']") \
        if "all_modules.0.weight" in model_sd else {**NCSNPP_CIFAR10}
    cfg.update(overrides)
    with torch.device("meta"):
        ref = NCSNpp(**cfg)
    names = [n for n, _ in ref.named_parameters()]
    if names_in_file:  # the named raw weights must fit the architecture the EMA list is mapped onto
        verify_state_dict(ref, {k: model_sd[k] for k in names_in_file}, f"{what} ['model']")
    if not ema:
        sd = {k: model_sd[k] for k in names}
        return build_verified(NCSNpp, cfg, sd, f"{what} ['model']"), {"ema": False}
    shadow = list(ckpt["ema"]["shadow_params"])
    if len(shadow) != len(names):
        raise CheckpointError(f"{what}: the EMA holds {len(shadow)} tensors but NCSN++ {cfg} has {len(names)} "
                              "parameters; pass the matching config (nf=, ch_mult=, num_res_blocks=, ...)")
    # Positional EMA → names, in parameters() order (the order ema.copy_to uses); shapes checked by _build.
    sd = dict(zip(names, shadow))
    info = {"ema": True, "ema_decay": ckpt["ema"].get("decay"), "ema_num_updates": ckpt["ema"].get("num_updates"),
            "step": ckpt.get("step"), "model_key_order_matches": names_in_file == names if names_in_file else None}
    return build_verified(NCSNpp, cfg, sd, f"{what} ['ema']['shadow_params']"), info


def _diffusers_dir(path: Path, overrides: dict) -> tuple[nn.Module, dict]:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path} is a directory without config.json (not a diffusers model directory)")
    cfg = {**json.loads(cfg_file.read_text()), **overrides}
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (path / name).exists():
            obj, _ = read_file(path / name)
            break
    else:
        raise CheckpointError(f"{path}: no diffusion_pytorch_model.safetensors or .bin next to config.json")
    return build_verified(DiffusersUNet2D, cfg, legacy_key_map(strip_prefixes(obj)), str(path / name)), {
        "diffusers_config": cfg}


def _infer(fn, *args, what: str):
    """Config inference reads specific keys; a file without them is not the architecture it claims to be."""
    try:
        return fn(*args)
    except (KeyError, IndexError, ValueError, ZeroDivisionError, UnboundLocalError) as e:
        raise CheckpointError(f"{what}: cannot infer the architecture from the keys ({type(e).__name__}: {e}); "
                              "the file is incomplete or another configuration; give its config (load_diffusion "
                              "keywords; in a sweep: [model.diffusion_config])") from e


def _arch(kind: str, sd: dict, saved: dict | None, config: dict, path, assumed: dict) -> tuple[type, dict, dict]:
    """(class, config, state_dict) for a named state_dict; `saved` is the config written by save_pretrained.
    Settings taken from the public models rather than the file go into `assumed` (name → why)."""
    what = str(path)
    if saved is None:  # what the public models' configs decide where the file's shapes do not
        key = {"ncsnpp": "image_size", "adm": "image_size", "ddpm": "resolution"}.get(kind)
        if key and key not in config:
            assumed[key] = (_NCSNPP_SIZE if kind == "ncsnpp" else
                            "inferred from channel_mult by guided-diffusion's defaults per image size" if kind == "adm"
                            else "inferred from the number of levels by the public DDPM configs (4: 32, 6: 256)")
    if kind == "ncsnpp":
        cfg = saved or _infer(_ncsnpp_config, sd, config.pop("image_size", 32), what=what)
        return NCSNpp, {**cfg, **config}, sd
    if kind == "adm":
        if saved is None and "num_head_channels" not in config:  # shapes do not depend on the head count
            assumed["num_head_channels"] = ("the file's shapes do not determine the attention head width; assumed "
                                            f"{ADM_256_UNCOND['num_head_channels']}, guided-diffusion's public models'")
        cfg = saved or _infer(_adm_config, sd, config.pop("image_size", None),
                              config.pop("num_head_channels", ADM_256_UNCOND["num_head_channels"]), what=what)
        return ADMUNet, {**cfg, **config}, sd
    if kind == "ddpm":
        cfg = saved or _infer(_ddpm_config, sd, config.pop("resolution", None), what=what)
        return DDPMModel, {**cfg, **config}, sd
    if saved is None:
        raise CheckpointError(f"{path}: a bare diffusers state_dict needs its config.json; "
                              "pass the model directory (config.json + diffusion_pytorch_model.safetensors)")
    return DiffusersUNet2D, {**saved, **config}, legacy_key_map(sd)


def load_diffusion(path, kind: str | None = None, *, device="cpu", dtype=None, channels_last: bool = False,
                   attention: str | None = None, ema: bool = True, sha256: bool | str = True,
                   index_at_time: str | None = None, compile: bool = False, precision: str = "fp32",
                   **config) -> PretrainedDiffusion:
    """Load public diffusion weights into fastpurify's own modules; returns a `PretrainedDiffusion`.

    kind: None (detect) or one of DIFFUSION_KINDS.  dtype: None/'fp32', 'fp16' (ADM: guided-diffusion's fp16 torso),
    'bf16'.  attention: 'sdpa' | 'math' | 'xformers'; None = 'math' for an fp16 ADM (guided-diffusion's legacy
    attention arithmetic, bit for bit), 'sdpa' otherwise.  ema: score_sde files — the EMA weights (default) or the raw
    'model' ones.  sha256: True records it in `.meta`, a hex string must match, False skips hashing.
    index_at_time: how an index-trained net is driven at continuous time (default: 'floor' for ADM, as DiffPure;
    'shifted' otherwise).  compile / precision ('fp32' | 'bf16' | 'fp16'): how every Purifier over this model runs
    its denoiser by default (recorded as `model.speed`; `fastpurify.models.fast`).  **config overrides inferred or
    default hyper-parameters (image_size=, num_head_channels=).
    """
    speed = SpeedOptions(compile=compile, precision=precision, channels_last=channels_last)  # checks them first
    path = Path(path)
    if kind is not None and kind not in DIFFUSION_KINDS:
        raise ValueError(f"kind must be one of {DIFFUSION_KINDS} or None, got {kind!r}")
    digest = checked_sha256(path, sha256)
    assumed: dict = {}
    net, info, kind = _read_net(path, kind, config, ema, assumed)
    meta, size, channels = _describe(net, kind, path, digest, info, assumed)
    if assumed:
        warnings.warn(f"{path}: " + "; ".join(f"{k}: {v}" for k, v in assumed.items())
                      + " (pass it as a keyword to say so)", stacklevel=2)
    model = PretrainedDiffusion(net, image_size=size, channels=channels, time_input=meta["time_input"],
                                index_at_time=index_at_time or ("floor" if kind == "adm" else "shifted"),
                                name=f"{kind}:{path.name}", meta=meta)
    model = model.to(device).eval()
    if parse_dtype(dtype) != torch.float32:
        model.set_precision(dtype)
    if channels_last:
        model.set_channels_last(True)
    precision_support(precision, torch.device(device))  # fp16 on a CPU without it: say so at load time
    model.speed = speed
    if attention is None:  # fp16 ADM: reproduce guided-diffusion's fp16 QKVAttentionLegacy exactly (docs/MODELS.md)
        attention = "math" if kind == "adm" and parse_dtype(dtype) == torch.float16 else "sdpa"
    return model.set_attention(attention)


def _read_net(path: Path, kind: str | None, config: dict, ema: bool, assumed: dict) -> tuple[nn.Module, dict, str]:
    """The network of a file or diffusers directory, checked against the asked kind: (net, extra meta, kind)."""
    info: dict = {}
    if path.is_dir():
        if kind not in (None, "diffusers"):
            raise CheckpointError(f"{path} is a directory, which only kind='diffusers' can be")
        net, info = _diffusers_dir(path, config)
        kind = "diffusers"
    else:
        obj, file_meta = read_file(path)
        found = detect_kind(obj)
        if kind is not None and kind != found:
            raise CheckpointError(f"{path} looks like a {found!r} checkpoint, not {kind!r}")
        kind = found
        if kind == "score_sde":
            net, info = _score_sde(obj, dict(config), ema, str(path), assumed)
        else:
            sd = strip_prefixes(obj[0] if isinstance(obj, (list, tuple)) else obj)
            saved = json.loads(file_meta["fastpurify.config"]) if "fastpurify.config" in file_meta else None
            net = build_verified(*_arch(kind, sd, saved, dict(config), path, assumed), str(path))
    return net, info, kind


def _describe(net: nn.Module, kind: str, path: Path, digest: str | None, info: dict,
              assumed: dict) -> tuple[dict, int, int]:
    """The loaded model's `meta` (format, file, hash, architecture, how it takes time, what it outputs), its image
    size and channels."""
    c = net.config
    size = c.get("image_size") or c.get("resolution") or c.get("sample_size")
    channels = c.get("channels") or c.get("in_channels")
    out_ch = c.get("out_channels") or c.get("out_ch") or channels
    if size is None:
        raise CheckpointError(f"{path}: the image size is not in the checkpoint; give image_size (load_diffusion "
                              "keyword; in a sweep: [model.diffusion_config] image_size = …)")
    time_input = "continuous" if kind in ("score_sde", "ncsnpp") else "index"
    meta = dict(kind=kind, path=str(path), sha256=digest, config=dict(c), time_input=time_input, assumed=assumed,
                output="eps" if out_ch == channels else f"eps[:{channels}] + learned variance[{channels}:]",
                params=sum(p.numel() for p in net.parameters()), tensors=len(net.state_dict()), **info)
    return meta, int(size), int(channels)


# ---------------------------------------------------------------------------------------------- named format
def save_pretrained(model: PretrainedDiffusion, path) -> Path:
    """Write a loaded model as a named, fp32 safetensors state_dict in its original key layout (so a score_sde
    checkpoint becomes a named `ncsnpp` file that never depends on positional order)."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = {k: v.detach().float().contiguous().cpu() for k, v in model.net.state_dict().items()}
    meta = {"fastpurify.kind": model.meta.get("kind", ""), "fastpurify.config": json.dumps(model.net.config)}
    save_file(sd, str(path), metadata=meta)
    return path
