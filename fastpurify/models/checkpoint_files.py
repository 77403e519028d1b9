"""Reading checkpoint files safely and checking them against an architecture: the part of loading that diffusion
models (`loaders.py`) and classifiers (`classifier_loading.py`) share.  Nothing here executes pickled code
(`torch.load(weights_only=True)`, or safetensors); the formats are described in `loaders.py`."""

from __future__ import annotations

import hashlib
import importlib
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from .diffusers_unet import DiffusersUNet2D

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


def checked_sha256(path: Path, sha256: bool | str) -> str | None:
    """The file's (or directory's) sha256 when asked (True, or the expected hex digest, which must match)."""
    if not sha256:
        return None
    digest = sha256_of(path)
    if isinstance(sha256, str) and digest != sha256.lower():
        raise CheckpointError(f"{path}: sha256 {digest} does not match the expected {sha256}")
    return digest


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


def is_state_dict(obj) -> bool:
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
    if isinstance(obj, (list, tuple)) and obj and is_state_dict(obj[0]):
        obj = obj[0]
    if not is_state_dict(obj):
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


def build_verified(cls, cfg: dict, sd: dict, what: str) -> nn.Module:
    """Build on the meta device (no init cost for 550 M parameters), verify, then load the file's tensors."""
    try:
        with torch.device("meta"):
            net = cls(cfg) if cls is DiffusersUNet2D else cls(**cfg)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: cannot build {cls.__name__} from config {cfg}: {e}") from e
    verify_state_dict(net, sd, what)
    net.load_state_dict(sd, strict=True, assign=True)
    return net.float().requires_grad_(False).eval()  # files may hold fp16 tensors; the torso dtype is an option


def count_indices(sd: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m[1] for k in sd if (m := rx.match(k))})
