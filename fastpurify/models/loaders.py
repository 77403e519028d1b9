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

import hashlib
import importlib
import json
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from .adm import ADM_256_UNCOND, ADMUNet
from .classifiers import DMWideResNet, ImageNetResNet50, WideResNet
from .ddpm_model import DDPMModel
from .diffusers_unet import DiffusersUNet2D, legacy_key_map
from .ncsnpp import NCSNPP_CIFAR10, NCSNpp
from .fast import SpeedOptions, precision_support
from .pretrained import PretrainedDiffusion, parse_dtype

DIFFUSION_KINDS = ("score_sde", "ncsnpp", "adm", "ddpm", "diffusers")
CLASSIFIER_KINDS = ("wrn", "dm-wrn", "resnet50")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked: unsafe content, unknown format, or a key/shape mismatch."""


# ---------------------------------------------------------------------------------------------- reading
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# Plain-data numpy globals that training scripts leave in checkpoint metadata (accuracies, arrays).  Allowing them
# lets the restricted unpickler rebuild numbers and arrays; it still refuses every other global (no code runs).
_NUMPY_DATA = re.compile(r"numpy\.(_?core\.multiarray\.(scalar|_reconstruct)|ndarray|dtype|dtypes\.\w+DType)$")


def _resolve(name: str):
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _load(path: Path, **kw):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True, **kw)
    except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True, **kw)


def _torch_load(path: Path):
    allowed: list[str] = []
    for _ in range(8):  # each retry admits more numpy data globals; anything else ends the loop with an error
        try:
            with torch.serialization.safe_globals([_resolve(g) for g in allowed]):
                return _load(path)
        except pickle.UnpicklingError as e:
            msg = str(e)
            try:  # the globals the pickle references; classes only met while building objects show up in msg
                unsafe = list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
            except Exception:  # legacy format: cannot be listed without unpickling
                unsafe = []
            unsafe += re.findall(r"got <class '([\w.]+)'>", msg)
            new = [g for g in dict.fromkeys(unsafe) if g not in allowed]
            if not new or not all(_NUMPY_DATA.match(g) for g in new):
                bad = [g for g in new if not _NUMPY_DATA.match(g)] or new
                what = f"it needs the globals {bad}" if bad else msg.strip().splitlines()[0]
                raise CheckpointError(
                    f"{path}: refusing to unpickle non-tensor content ({what}). fastpurify loads with "
                    "torch.load(weights_only=True) and never executes pickled code. If you trust this file, convert "
                    "it once to a plain state_dict: torch.save(torch.load(p, weights_only=False)<...>.state_dict(), "
                    "'clean.pt')") from e
            allowed += new
    raise CheckpointError(f"{path}: too many numpy globals in the pickle")


def read_file(path) -> tuple[object, dict]:
    """Read a checkpoint safely.  Returns (content, safetensors metadata or {})."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; only diffusers model directories (config.json) are supported")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(str(path)), meta
    with open(path, "rb") as f:  # torch.save writes a zip archive (or, before 1.6, a protocol-2 pickle)
        head = f.read(2)
    if head != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle) "
                              "and not a .safetensors file")
    return _torch_load(path), {}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def strip_prefixes(sd: dict) -> dict:
    """Drop wrapper prefixes shared by every key: 'module.' (DataParallel), 'model.', and a bare 'N.' (Sequential)."""
    while sd:
        keys = list(sd)
        for pre in ("module.", "model."):
            if all(k.startswith(pre) for k in keys):
                sd = {k[len(pre):]: v for k, v in sd.items()}
                break
        else:
            m = re.match(r"(\d+\.)", keys[0])
            if m and all(k.startswith(m[1]) for k in keys):
                sd = {k[len(m[1]):]: v for k, v in sd.items()}
                continue
            return sd
    return sd


def detect_kind(obj) -> str:
    """The diffusion format of loaded file content (see the module docstring)."""
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict) and "shadow_params" in obj["ema"]:
        return "score_sde"
    if isinstance(obj, (list, tuple)) and obj and _is_state_dict(obj[0]):
        obj = obj[0]
    if not _is_state_dict(obj):
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"not a diffusion state_dict or score_sde checkpoint: got {what}")
    sd = strip_prefixes(obj)
    for kind, key in (("ncsnpp", "all_modules.0.weight"), ("adm", "input_blocks.0.0.weight"),
                      ("ddpm", "temb.dense.0.weight"), ("diffusers", "time_embedding.linear_1.weight")):
        if key in sd:
            return kind
    other = classifier_kind(sd)
    hint = f" it is a {other!r} classifier, not a diffusion model;" if other else ""
    raise CheckpointError(f"unrecognised diffusion state_dict;{hint} supported kinds: {', '.join(DIFFUSION_KINDS)}; "
                          f"first keys: {list(sd)[:4]}")


def classifier_kind(sd: dict) -> str | None:
    """The classifier layout of a state_dict (CLASSIFIER_KINDS), or None."""
    return ("dm-wrn" if "init_conv.weight" in sd else "wrn" if "block1.layer.0.conv1.weight" in sd
            else "resnet50" if "layer4.2.conv3.weight" in sd else None)


# ---------------------------------------------------------------------------------------------- verification
def verify_state_dict(net: nn.Module, sd: dict, what: str) -> None:
    """Strict key and shape check against `net`, with every problem named (lists truncated at 20)."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {want[k]}" for k in want if k in sd
              and tuple(sd[k].shape) != want[k]]
    if missing or unexpected or shapes:
        def fmt(name, xs):
            return f"\n  {len(xs)} {name}: " + ", ".join(xs[:20]) + (" …" if len(xs) > 20 else "") if xs else ""

        raise CheckpointError(f"{what} does not match the architecture {getattr(net, 'config', '')}:"
                              + fmt("missing keys", missing) + fmt("unexpected keys", unexpected)
                              + fmt("shape mismatches", shapes))


def _build(cls, cfg: dict, sd: dict, what: str) -> nn.Module:
    """Build on the meta device (no init cost for 550 M parameters), verify, then load the file's tensors."""
    try:
        with torch.device("meta"):
            net = cls(cfg) if cls is DiffusersUNet2D else cls(**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: cannot build {cls.__name__} from config {cfg}: {e}") from e
    verify_state_dict(net, sd, what)
    net.load_state_dict(sd, strict=True, assign=True)
    return net.float().requires_grad_(False).eval()  # files may hold fp16 tensors; the torso dtype is an option


def _count(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m[1] for k in sd if (m := rx.match(k))})


# ---------------------------------------------------------------------------------------------- config inference
def _ncsnpp_config(sd: dict, image_size: int) -> dict:
    """nf, ch_mult, num_res_blocks and attention levels from a named NCSN++ state_dict (the 'model' keys)."""
    n = _count(sd, r"all_modules\.(\d+)\.")
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
    n_out = _count(sd, r"output_blocks\.(\d+)\.")

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
    ch, levels = sd["conv_in.weight"].shape[0], _count(sd, r"down\.(\d+)\.")
    if resolution is None:  # the public DDPM `Model` configs: CIFAR-10 (4 levels, 32²), CelebA-HQ / LSUN (6, 256²)
        resolution = {4: 32, 6: 256}.get(levels)
        if resolution is None:
            raise CheckpointError(f"a DDPM Model with {levels} levels does not determine the resolution; "
                                  "pass resolution=")
    return dict(resolution=resolution, in_channels=sd["conv_in.weight"].shape[1], out_ch=sd["conv_out.weight"].shape[0],
                ch=ch, ch_mult=tuple(sd[f"down.{lvl}.block.0.conv1.weight"].shape[0] // ch for lvl in range(levels)),
                num_res_blocks=_count(sd, r"down\.0\.block\.(\d+)\."),
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
        return _build(NCSNpp, cfg, sd, f"{what} ['model']"), {"ema": False}
    shadow = list(ckpt["ema"]["shadow_params"])
    if len(shadow) != len(names):
        raise CheckpointError(f"{what}: the EMA holds {len(shadow)} tensors but NCSN++ {cfg} has {len(names)} "
                              "parameters; pass the matching config (nf=, ch_mult=, num_res_blocks=, ...)")
    # Positional EMA → names, in parameters() order (the order ema.copy_to uses); shapes checked by _build.
    sd = dict(zip(names, shadow))
    info = {"ema": True, "ema_decay": ckpt["ema"].get("decay"), "ema_num_updates": ckpt["ema"].get("num_updates"),
            "step": ckpt.get("step"), "model_key_order_matches": names_in_file == names if names_in_file else None}
    return _build(NCSNpp, cfg, sd, f"{what} ['ema']['shadow_params']"), info


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
    return _build(DiffusersUNet2D, cfg, legacy_key_map(strip_prefixes(obj)), str(path / name)), {
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
    digest = None
    if sha256:
        digest = sha256_of(path)
        if isinstance(sha256, str) and digest != sha256.lower():
            raise CheckpointError(f"{path}: sha256 {digest} does not match the expected {sha256}")
    info: dict = {}
    assumed: dict = {}
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
            net = _build(*_arch(kind, sd, saved, dict(config), path, assumed), str(path))
    c = net.config
    size = c.get("image_size") or c.get("resolution") or c.get("sample_size")
    channels = c.get("channels") or c.get("in_channels")
    out_ch = c.get("out_channels") or c.get("out_ch") or channels
    if size is None:
        raise CheckpointError(f"{path}: the image size is not in the checkpoint; give image_size (load_diffusion "
                              "keyword; in a sweep: [model.diffusion_config] image_size = …)")
    time_input = "continuous" if kind in ("score_sde", "ncsnpp") else "index"
    if assumed:
        warnings.warn(f"{path}: " + "; ".join(f"{k}: {v}" for k, v in assumed.items())
                      + " (pass it as a keyword to say so)", stacklevel=2)
    meta = dict(kind=kind, path=str(path), sha256=digest, config=dict(c), time_input=time_input, assumed=assumed,
                output="eps" if out_ch == channels else f"eps[:{channels}] + learned variance[{channels}:]",
                params=sum(p.numel() for p in net.parameters()), tensors=len(net.state_dict()), **info)
    model = PretrainedDiffusion(net, image_size=int(size), channels=int(channels), time_input=time_input,
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


# ---------------------------------------------------------------------------------------------- classifiers
def _unwrap_classifier(obj, path) -> dict:
    if isinstance(obj, (list, tuple)) and obj:
        obj = obj[0]
    for key in ("state_dict", "model_state_dict", "ema", "net", "model"):  # RobustBench, DiffPure, ADBM, GDMP
        if isinstance(obj, dict) and not _is_state_dict(obj) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not _is_state_dict(obj):
        raise CheckpointError(f"{path}: no classifier state_dict found (top-level keys "
                              f"{sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__})")
    return strip_prefixes(obj)


def _bn_counters(cls, cfg) -> list[str]:
    with torch.device("meta"):
        return [k for k in cls(**cfg).state_dict() if k.endswith("num_batches_tracked")]


def load_classifier(path, kind: str | None = None, *, normalize: str | None = None, device="cpu",
                    sha256: bool | str = True, **config) -> nn.Module:
    """Load a classifier state_dict into fastpurify's WRN / DM-WRN / ResNet-50 (eval mode, frozen, x ∈ [0, 1]).

    kind: None (detect) | 'wrn' (RobustBench/DiffPure WideResNet) | 'dm-wrn' (RobustBench DMWideResNet) |
    'resnet50' (torchvision, ImageNet).  normalize: 'none' | 'cifar10' | 'cifar100' | 'imagenet'; default: dm-wrn →
    cifar10 (cifar100 with 100 classes);
    wrn → cifar10 for DiffPure's WRN-70-16(-dropout), none otherwise (RobustBench 'Standard'); resnet50 → imagenet.
    """
    path = Path(path)
    digest = sha256_of(path) if sha256 else None
    if isinstance(sha256, str) and digest != sha256.lower():
        raise CheckpointError(f"{path}: sha256 {digest} does not match the expected {sha256}")
    obj = read_file(path)[0]
    if isinstance(obj, dict) and isinstance(obj.get("ema"), dict) and "shadow_params" in obj["ema"]:
        raise CheckpointError(f"{path}: a score_sde diffusion checkpoint, not a classifier; give it as the "
                              "diffusion model")
    sd = _unwrap_classifier(obj, path)
    found = classifier_kind(sd)
    if found is None:
        try:
            diffusion = detect_kind(sd)
        except CheckpointError:
            diffusion = None
        hint = f" it is a {diffusion!r} diffusion model, not a classifier;" if diffusion else ""
        raise CheckpointError(f"{path}: unrecognised classifier state_dict;{hint} supported kinds: "
                              f"{', '.join(CLASSIFIER_KINDS)} (WideResNet, DMWideResNet, torchvision ResNet-50); "
                              f"first keys: {list(sd)[:4]}")
    if kind is not None and kind != found:
        raise CheckpointError(f"{path} looks like a {found!r} classifier, not {kind!r}")
    if found == "resnet50":
        cls, cfg = ImageNetResNet50, dict(num_classes=sd["fc.weight"].shape[0], normalize=normalize or "imagenet")
        sd = {f"model.{k}": v for k, v in sd.items()}
    else:
        dm = found == "dm-wrn"
        grp, head = ("layer.0.block", "logits") if dm else ("block1.layer", "fc")
        depth = 6 * _count(sd, rf"{re.escape(grp)}\.(\d+)\.") + 4
        width = sd[f"{grp}.0.conv_0.weight" if dm else f"{grp}.0.conv1.weight"].shape[0] // 16
        n_classes = sd[f"{head}.weight"].shape[0]
        # RobustBench's DM models normalise with their dataset's statistics (CIFAR-100 for its 100-class ones)
        default_norm = ("cifar100" if dm and n_classes == 100 else "cifar10" if dm or (depth, width) == (70, 16)
                        else "none")
        cls = DMWideResNet if dm else WideResNet
        cfg = dict(depth=depth, num_classes=n_classes, normalize=normalize or default_norm,
                   **({"width": width} if dm else {"widen_factor": width}))
    cfg.update(config)
    # Files saved before PyTorch 0.4.1 lack BatchNorm's num_batches_tracked (unused in eval); torch fills it too.
    sd.update({k: torch.tensor(0) for k in _bn_counters(cls, cfg) if k not in sd})
    net = _build(cls, cfg, sd, str(path))
    net._set_norm(cfg["normalize"])  # the normalisation buffers are not in the file (built on meta: recreate)
    net.meta = dict(kind=found, path=str(path), sha256=digest, config=cfg,
                    params=sum(p.numel() for p in net.parameters()))
    return net.to(device)


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
