"""Validation of a sweep config before any work: every check that needs no model or data loaded (those follow in
`preflight`, still before any work).  `validate` raises ConfigError naming the field and the problem."""

from __future__ import annotations

import os

from .config import (
    ATTACK_GRADS,
    ATTACK_KINDS,
    ATTACK_LOSSES,
    BASELINES,
    DATASETS,
    DTYPES,
    GUIDED_OR_MULTI,
    LABEL_TYPES,
    NORMS,
    SUBSETS,
    ConfigError,
    DataConfig,
    ModelConfig,
    SweepConfig,
    settings_problems,
)


def method_names() -> list[str]:
    from ...methods import DIGITS
    from ...presets import preset_names

    return [*BASELINES, *DIGITS, *[p for p in preset_names() if p not in DIGITS]]


def validate(cfg: SweepConfig) -> SweepConfig:
    """Every check that needs no model or data loaded (those follow in plan.py, still before any work)."""
    def need(ok: bool, msg: str):
        if not ok:
            raise ConfigError(msg)

    need(bool(cfg.out), "out: the output directory is required")
    need(cfg.eps >= 0, f"eps must be >= 0, got {cfg.eps}")
    need(cfg.norm in NORMS, f"norm must be one of {NORMS}, got {cfg.norm!r}")
    need(cfg.n_reevals >= 1, f"n_reevals (N) must be >= 1, got {cfg.n_reevals}")
    need(cfg.batch_size >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    for k in ("n_select", "eot_chunk"):  # ProtocolConfig's None: leave the key out
        need(getattr(cfg, k) is None or getattr(cfg, k) >= 1,
             f"{k} must be >= 1, got {getattr(cfg, k)} (leave it out for the default: "
             f"{'N' if k == 'n_select' else 'all rows at once'})")
    need(cfg.threads >= 0 and cfg.grid >= 0, "threads and grid must be >= 0")
    need(cfg.seed >= 0, f"seed must be >= 0, got {cfg.seed}")
    need(cfg.large_eps >= 0 and cfg.large_eps_n >= 0, "large_eps and large_eps_n must be >= 0 (0: check not run)")
    need(not cfg.large_eps or cfg.large_eps > cfg.eps,
         f"large_eps ({cfg.large_eps}) must exceed eps ({cfg.eps}): the check attacks at a much larger radius")
    need(cfg.dtype in DTYPES, f"dtype must be one of {DTYPES}, got {cfg.dtype!r}")
    need(cfg.grad in ATTACK_GRADS, f"grad must be one of {ATTACK_GRADS}, got {cfg.grad!r}")
    _check_device(cfg.device)
    if cfg.backend:
        from ...ops.registry import BACKEND_NAMES

        need(cfg.backend in BACKEND_NAMES, f"backend must be one of {BACKEND_NAMES} or empty, got {cfg.backend!r}")
    _check_data(cfg.data)
    _check_model(cfg.model, cfg)
    _check_methods(cfg)
    _check_attacks(cfg)
    return cfg


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device {device!r} is not a torch device (cpu, cuda, cuda:1, …)") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine")


def _exists(path: str, what: str) -> None:
    if not path:
        raise ConfigError(f"{what}: a path is required")
    if not os.path.exists(path):
        raise ConfigError(f"{what}: {path} does not exist")


def _check_data(d: DataConfig) -> None:
    if d.dataset not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {DATASETS}, got {d.dataset!r}")
    if d.subset not in SUBSETS:
        raise ConfigError(f"data.subset must be one of {SUBSETS}, got {d.subset!r}")
    if d.n < 0 or any(i < 0 for i in d.ids):
        raise ConfigError("data.n and data.ids must be >= 0")
    if len(set(d.ids)) != len(d.ids):
        raise ConfigError("data.ids has duplicates")
    if d.ids_file:
        _exists(d.ids_file, "data.ids_file")
    if d.label_type and d.dataset != "cifar100":
        raise ConfigError(f"data.label_type is for cifar100 (fine or coarse labels); {d.dataset} has one label set")
    if d.dataset == "cifar100" and d.label_type not in LABEL_TYPES:
        raise ConfigError(f"data.label_type must be one of {LABEL_TYPES}, got {d.label_type!r}")
    if d.class_map and d.dataset != "imagenet":
        raise ConfigError("data.class_map maps ImageFolder class folders to class indices: imagenet only")
    if d.class_map:
        _exists(d.class_map, "data.class_map")
    if d.dataset == "digits":
        if d.split not in ("test", "val", "train"):
            raise ConfigError(f"data.split for digits must be test, val or train, got {d.split!r}")
        if d.path:
            raise ConfigError("data.path: the digits are embedded, give no path")
    elif d.dataset in ("cifar10", "cifar100"):
        folder = "cifar-10-batches-py" if d.dataset == "cifar10" else "cifar-100-python"
        _exists(d.path, f"data.path ({folder} directory or images .npy)")
        if d.path.endswith(".npy"):
            _exists(d.labels, "data.labels (labels .npy next to the images .npy)")
        elif d.split not in ("test", "train"):
            raise ConfigError(f"data.split for the {folder} pickles must be test or train, got {d.split!r}")
    else:
        _exists(d.path, "data.path (ImageFolder directory of class folders)")


def _check_model(m: ModelConfig, cfg: SweepConfig) -> None:
    for name in ("diffusion", "classifier"):
        path = getattr(m, name)
        if path != "digits":
            _exists(path, f"model.{name}")
        elif cfg.data.dataset != "digits":
            raise ConfigError(f"model.{name} = 'digits' only fits data.dataset = 'digits'; give a checkpoint file")
    if m.aux not in ("", "digits"):
        _exists(m.aux, "model.aux")
    if cfg.dtype in ("fp16", "bf16") and m.diffusion == "digits":
        raise ConfigError(f"dtype {cfg.dtype!r} is a torso precision of loaded checkpoints (load_diffusion); "
                          "the embedded digits model runs in fp32 or fp64")
    if cfg.dtype == "fp64" and m.diffusion != "digits":
        raise ConfigError("dtype 'fp64' is supported for the embedded digits model only")
    for name in ("diffusion", "classifier"):
        if getattr(m, f"{name}_config") and getattr(m, name) == "digits":
            raise ConfigError(f"model.{name}_config describes a checkpoint file; the embedded digits model has none")


def _check_methods(cfg: SweepConfig) -> None:
    from ...presets import get_preset

    if not cfg.methods:
        raise ConfigError("methods: give at least one [[methods]] entry")
    known = method_names()
    labels = [m.label for m in cfg.methods]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"methods: duplicate labels {dup}; give each a distinct label")
    for i, m in enumerate(cfg.methods):
        where = f"methods.{i} ({m.label or m.name!r})"
        if any(c in m.label for c in "/#"):
            raise ConfigError(f"{where}: a label may not contain '/' or '#' (they separate keys of saved images)")
        if m.name not in known:
            raise ConfigError(f"{where}: unknown method {m.name!r}; known: {', '.join(known)}")
        unknown = sorted(set(m.attacks) - {a.name for a in cfg.attacks})
        if unknown:
            raise ConfigError(f"{where}: attacks {unknown} are not in [[attacks]]")
        guided = m.name.startswith(("agdm", "gdmp"))
        if m.scale is not None and not guided:
            raise ConfigError(f"{where}: scale is a guidance scale; {m.name!r} has no guidance")
        if m.steps is not None and (m.name in BASELINES or m.name in GUIDED_OR_MULTI):
            raise ConfigError(f"{where}: steps applies to presets only (diffpure, ddpm, ddim, …)")
        if m.steps is not None and m.steps < 1:
            raise ConfigError(f"{where}: steps must be >= 1")
        problems = settings_problems(m.name, t_star=m.t_star, steps=m.steps, scale=m.scale)
        if problems:
            raise ConfigError(f"{where}: {problems[0]}")
        if (m.name.startswith("agdm") or m.name in ("aux", "diffpure+aux")) and not cfg.model.aux:
            raise ConfigError(f"{where}: AGDM needs model.aux (its auxiliary network; 'digits' for the embedded one)")
        if m.name not in ("none", "aux") and any(a.grad == "adjoint" for a in cfg.attacks):
            sampler = ("ddpm" if m.name in GUIDED_OR_MULTI else "vpsde" if m.name == "diffpure+aux"
                       else get_preset(m.name).sampler)
            if sampler != "vpsde":
                raise ConfigError(f"{where}: an attack uses grad='adjoint', the VP-SDE adjoint, but {m.name!r} "
                                  f"samples with {sampler!r}; use grad='full'")


def _check_attacks(cfg: SweepConfig) -> None:
    if not cfg.attacks:
        raise ConfigError("attacks: give at least one [[attacks]] entry (the ensemble)")
    names = [a.name for a in cfg.attacks]
    if not all(names):
        raise ConfigError("attacks: every attack needs a name")
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise ConfigError(f"attacks: duplicate names {dup}")
    for a in cfg.attacks:
        where = f"attacks.{a.name}"
        if a.kind not in ATTACK_KINDS:
            raise ConfigError(f"{where}: unknown kind {a.kind!r}; expected one of {ATTACK_KINDS}")
        if a.loss not in ATTACK_LOSSES:
            raise ConfigError(f"{where}: unknown loss {a.loss!r}; expected one of {ATTACK_LOSSES}")
        if a.steps < 1 or a.eot < 1 or a.states < 1:
            raise ConfigError(f"{where}: need steps >= 1, eot >= 1, states >= 1")
        if a.grad not in ATTACK_GRADS:
            raise ConfigError(f"{where}: grad must be one of {ATTACK_GRADS}, got {a.grad!r}")
        if a.step_size is not None and a.step_size <= 0:
            raise ConfigError(f"{where}: step_size must be > 0, got {a.step_size}")
        if a.variant == "":  # schema 1 spelled "none" as ""; AttackSpec's none is None
            raise ConfigError(f"{where}: variant \"\" — leave the key out for no variant")
        if a.variant and a.kind != "pgd":
            raise ConfigError(f"{where}: a purifier variant is for 'pgd' attacks only")
        if a.kind in ("aux", "joint") and not cfg.model.aux:
            raise ConfigError(f"{where}: a {a.kind!r} attack targets the auxiliary network: set model.aux")
