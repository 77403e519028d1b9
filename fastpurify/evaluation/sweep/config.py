"""Sweep configuration: one TOML file (read with the standard library), `--set key=value` overrides, and a full
validation before any work starts (validation.py; docs/SWEEPS.md lists every key).

    out = "runs/digits"            # output directory (records, manifest, report)
    eps = 0.15                     # threat model on the [0, 1] scale
    norm = "linf"
    n_reevals = 5                  # N fresh purifications per evaluation
    large_eps = 0.5                # masking check: plain CE at this ε on the first large_eps_n images → ~0 % (0: off)
    [data]      dataset, split, path, labels, label_type, class_map, subset, n, ids, ids_file, data_seed
    [model]     diffusion, classifier (files or "digits"), their kinds and configs, aux, allow_downsample
    [[methods]] name (none | build_method name | preset), label, t_star, steps, scale
    [[attacks]] the fields of fastpurify.attacks.AttackSpec (name, kind, loss, steps, eot, step_size, random_start,
                grad, variant, weight, kappa, states, cascade); grad left out = the sweep's grad
    [default_ensemble] use, steps, eot, transfer_steps: the protocol's default attacks per method (plan.py)

Attacks are `fastpurify.attacks.AttackSpec`s run by the evaluation protocol (`fastpurify.evaluation.protocol`):
an [[attacks]] entry and the protocol keys (eps, norm, n_reevals, n_select, seed, eot_chunk, large_eps,
large_eps_n) take their fields, types and defaults from `AttackSpec` and `ProtocolConfig` (one definition; a
key left out is None where the field allows it, e.g. n_select → N, eot_chunk → all rows at once).
The config id is a hash of every field that can change a result; fields that only change how the work is done
(out, batch_size, threads, quiet, save_adv, grid, device index) are left out, so a resumed sweep may change them.
"""

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field

import tomllib

from ...attacks.adaptive import KINDS as ATTACK_KINDS  # noqa: F401  (their one home, named here for the sweep)
from ...attacks.adaptive import AttackSpec
from ...attacks.losses import LOSSES
from ..defences import BASELINES  # noqa: F401  (the baselines' one home)
from ..protocol import ProtocolConfig

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")
# The split each dataset reads when `split` is not given (ImageNet: the validation set is the evaluation set).
DEFAULT_SPLIT = {"digits": "test", "cifar10": "test", "cifar100": "test", "imagenet": "val"}
LABEL_TYPES = ("fine", "coarse")  # CIFAR-100: 100 fine classes or 20 superclasses
SUBSETS = ("first", "seeded")
DTYPES = ("fp32", "fp64", "fp16", "bf16")
NORMS = ("linf", "l2")
ATTACK_LOSSES = tuple(LOSSES)
# 'surrogate' needs a second purifier built into the method: not a per-attack setting of a sweep.
ATTACK_GRADS = ("full", "autograd", "adjoint", "bpda")
# build_method's own methods (DDPM chains, their settings in fastpurify.methods.DIGITS); other names are presets.
GUIDED_OR_MULTI = ("agdm", "gdmp-mse", "gdmp-ssim", "multiround")
# Fields that never change a result: not part of the config id, free to change when resuming.
RUNTIME_FIELDS = ("out", "batch_size", "threads", "quiet", "save_adv", "grid")
# The layout of config.json's identity: a sweep directory written under another layout is refused (shards.py
# names the changed field 'schema'), never mixed.  2: attack and protocol fields from AttackSpec / ProtocolConfig.
SCHEMA = 2
# The ProtocolConfig fields a sweep config sets (top-level keys); the protocol's other thresholds keep its defaults.
PROTOCOL_KEYS = ("eps", "norm", "n_reevals", "n_select", "seed", "eot_chunk", "large_eps", "large_eps_n")


class ConfigError(ValueError):
    """A sweep configuration that cannot run; the message names the field and the problem."""


@dataclass
class DataConfig:
    dataset: str = "digits"        # digits | cifar10 | cifar100 | imagenet
    split: str = ""                # "" = DEFAULT_SPLIT; digits: test | val | train; cifar (pickles): test | train
    path: str = ""                 # cifar10/100: cifar-10-batches-py / cifar-100-python dir or images .npy;
                                   # imagenet: ImageFolder tree of synset folders
    labels: str = ""               # cifar10/100 as .npy: the labels .npy
    label_type: str = ""           # cifar100: fine (default) | coarse
    class_map: str = ""            # imagenet: "folder index" per line, for folders that are not ImageNet-1k synsets
    subset: str = "first"          # first: ids 0..n-1; seeded: n ids drawn with data_seed (sorted)
    n: int = 0                     # 0: the whole split
    ids: list[int] = field(default_factory=list)   # explicit ids (index in the full split); overrides subset
    ids_file: str = ""             # one id per line: an int, or an ImageFolder path (RobustBench's id list)
    data_seed: int = 0


@dataclass
class ModelConfig:
    diffusion: str = "digits"      # "digits" (embedded) or a checkpoint for fastpurify.load_diffusion
    diffusion_kind: str = ""       # load_diffusion kind ("" = detect)
    classifier: str = "digits"     # "digits" or a state_dict for fastpurify.load_classifier
    classifier_kind: str = ""
    normalize: str = ""            # load_classifier normalize ("" = its default)
    aux: str = ""                  # AGDM's auxiliary network: "digits" or a classifier file
    diffusion_config: dict = field(default_factory=dict)   # load_diffusion keywords (image_size, num_head_channels…)
    classifier_config: dict = field(default_factory=dict)  # load_classifier keywords (num_classes, depth…)
    allow_downsample: bool = False  # purify data larger than the diffusion model by resizing down (and back up)


@dataclass
class MethodConfig:
    name: str = ""                 # none | diffpure | agdm | gdmp-mse | gdmp-ssim | multiround | a preset name
    label: str = ""                # unique name in records and reports (default: name, with t* when given)
    t_star: int | float | None = None
    steps: int | None = None       # presets only: sampler steps (respacing)
    scale: float | None = None     # guided methods: the guidance scale
    attacks: list[str] = field(default_factory=list)  # names of the [[attacks]] it runs ([] = every one that applies)


def _fields_of(cls, names, defaults: dict) -> list[tuple]:
    """make_dataclass entries copying `cls`'s fields `names` (type and default), a default replaced by `defaults`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.name in names:
            default = defaults.get(f.name, f.default)
            out.append((f.name, hints[f.name], field(default=default)))
    return out


# One attack of the ensemble: exactly `AttackSpec`'s fields and defaults, except that a name is not required here
# (validation asks for it) and grad None means the sweep's grad.  `to_spec()` is the attack that runs.
AttackConfig = dataclasses.make_dataclass(
    "AttackConfig", _fields_of(AttackSpec, [f.name for f in dataclasses.fields(AttackSpec)],
                               {"name": "", "grad": None}),
    namespace={"to_spec": lambda self: AttackSpec(**dataclasses.asdict(self)),
               "__doc__": "One [[attacks]] entry: the fields of fastpurify.attacks.AttackSpec (grad None = the "
                          "sweep's grad)."})
AttackConfig.__module__ = __name__

# The protocol part of the sweep config: ProtocolConfig's own fields (eps defaults to 0 here; validation asks for
# it to be set).
_ProtocolKeys = dataclasses.make_dataclass("_ProtocolKeys", _fields_of(ProtocolConfig, PROTOCOL_KEYS, {"eps": 0.0}))
_ProtocolKeys.__module__ = __name__


@dataclass
class DefaultEnsembleConfig:
    use: bool = False              # each method gets the protocol's default attack list (fastpurify.attacks)
    steps: int = 20                # PGD steps × EOT draws of the randomised defences' attacks
    eot: int = 4
    transfer_steps: int = 100      # steps of the attacks on the auxiliary network alone


@dataclass
class SweepConfig(_ProtocolKeys):
    """The protocol keys (PROTOCOL_KEYS, from ProtocolConfig) and how the sweep runs."""

    out: str = ""
    batch_size: int = 16
    grad: str = "full"
    device: str = "cpu"
    dtype: str = "fp32"
    backend: str = ""              # op backend ("" = automatic)
    ensemble: str = ""             # name of the attack ensemble ("" = the attack names joined by '+')
    threads: int = 0               # torch threads per process (0 = torch's default)
    save_adv: bool = False         # adversarial images into per-rank safetensors shards
    grid: int = 8                  # images in the report's sample grid (their purified views are saved too)
    quiet: bool = False            # no progress bars
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    methods: list[MethodConfig] = field(default_factory=list)
    attacks: list[AttackConfig] = field(default_factory=list)
    default_ensemble: DefaultEnsembleConfig = field(default_factory=DefaultEnsembleConfig)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def protocol(self) -> ProtocolConfig:
        """The evaluation protocol's settings: the PROTOCOL_KEYS, as they are (large_eps 0: the check is off)."""
        return ProtocolConfig(**{k: getattr(self, k) for k in PROTOCOL_KEYS})


# ------------------------------------------------------------------------------------------------ parsing
def _coerce(value, hint, where: str):
    """Check `value` against the type hint (int, float, str, bool, list[int], X | None, dataclasses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1])
    if hint is dict or origin is dict:  # a table of checkpoint settings, passed through as keywords
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        bad = [k for k, v in value.items() if isinstance(v, dict)]
        if bad:
            raise ConfigError(f"{where}: {bad[0]} must be a number, string, boolean or list, not a table")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}.{i}") for i, v in enumerate(value)]  # --set spelling
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r}")


def _build(cls, raw, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"unknown field{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(repr(_join(where, k)) for k in unknown)}; known: {', '.join(names)}")
    return cls(**{k: _coerce(v, hints[k], _join(where, k)) for k, v in raw.items()})


def _join(where: str, key) -> str:
    return f"{where}.{key}" if where else str(key)


def parse_value(text: str):
    """A --set value in TOML syntax (0.5, true, [1, 2], "x"); anything else is taken as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict, assignment: str) -> None:
    """`a.b.c=value` into the raw dict; list items by index (`methods.0.t_star=50`)."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {assignment!r}: empty key")
    node = raw
    for i, p in enumerate(parts[:-1]):
        where = ".".join(parts[:i + 1])
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"--set {key}: {where} is not an index of a list of {len(node)}")
            node = node[int(p)]
        else:
            node = node.setdefault(p, {})
        if not isinstance(node, (dict, list)):
            raise ConfigError(f"--set {key}: {where} is not a table")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: {last!r} is not an index of a list of {len(node)}")
        node[int(last)] = parse_value(text)
    else:
        node[last] = parse_value(text)


def settings_problems(name: str, *, settings: dict | None = None, t_star=None, steps: int | None = None,
                      scale: float | None = None) -> list[str]:
    """Why the build of method `name` (a baseline, a `fastpurify.methods` name or a preset) with these settings
    would fail, as messages; [] when it resolves.  Needs no model."""
    from ...methods import DIGITS, with_scale
    from ...presets import resolve

    if name in ("none", "aux"):
        return []
    base = name.removesuffix("+aux")
    try:
        if scale is not None:
            settings = with_scale(base, scale)
        if settings is None and base in DIGITS:
            settings = DIGITS[base]
        if settings is None:  # a preset, with the sweep's own steps
            resolve(name, t_star=t_star, steps=steps)
        elif "rounds_t" in settings:  # multi-round: DDPM rounds at their own t*
            for k in settings["rounds_t"]:
                resolve("ddpm", t_star=k, steps=settings.get("steps"))
        else:
            resolve(settings.get("preset", base), t_star=t_star, steps=settings.get("steps", steps))
    except (TypeError, ValueError, KeyError) as e:
        return [f"{name}: {e}"]
    return []


# ------------------------------------------------------------------------------------------------ identity
def identity(cfg: SweepConfig) -> dict:
    """The fields that can change a result (the config id hashes these), and the code that computes it: the package
    version and a hash of its source, so records of other code are never mixed in on a resume (docs-only changes
    keep the id)."""
    import torch

    from ... import _version

    d = cfg.as_dict()
    for k in RUNTIME_FIELDS:
        d.pop(k)
    d["device"] = torch.device(cfg.device).type  # cuda:0 and cuda:1 give the same results
    d["schema"] = SCHEMA
    d["code"] = {"version": _version.__version__, "fingerprint": _version.code_fingerprint()}
    return d


def config_id(cfg: SweepConfig) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def changed_fields(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the fields that differ between two identity dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b, name = old.get(k), new.get(k), _join(prefix, k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, name)
        elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and all(
                isinstance(x, dict) for x in a + b):
            for i, (x, y) in enumerate(zip(a, b)):
                out += changed_fields(x, y, f"{name}.{i}")
        elif a != b:
            out.append(name)
    return out
