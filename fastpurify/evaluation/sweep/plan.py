"""Reading a sweep config into the plan that runs: `load_config` (read, override, resolve defaults, validate) and
`[default_ensemble]`: the protocol's default attack list per method
(`fastpurify.attacks.default_attacks`: PGD with exact gradients, CE and a margin restart, BPDA, blind and
forward-only transfers, and for AGDM the attacks on φ, the joint loss and the detached-guidance variant), written
out as explicit [[attacks]] entries and per-method attack lists when the config is read, so the stored config says
exactly what ran.  Deterministic defences (none, aux) get PGD with more steps and one draw, named '-det'.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import tomllib

from ...attacks.adaptive import default_attacks, default_step_size
from ..defences import traits
from .config import (
    DEFAULT_SPLIT,
    AttackConfig,
    ConfigError,
    MethodConfig,
    SweepConfig,
    _build,
    apply_override,
)
from .validation import validate

def _entry(spec, suffix: str) -> AttackConfig:
    return AttackConfig(**{**dataclasses.asdict(spec), "name": spec.name + suffix})


def expand_default_ensemble(cfg: SweepConfig) -> None:
    """In place: every method's default attacks join cfg.attacks (before the explicit ones, which every method
    also runs where they apply); a method without its own `attacks` list gets its defaults plus the explicit ones;
    the ensemble is named 'default STEPSxEOT[+explicit…]' unless the config names it."""
    d = cfg.default_ensemble
    if not d.use:
        return
    if d.steps < 1 or d.eot < 1 or d.transfer_steps < 1:
        raise ConfigError("default_ensemble: need steps >= 1, eot >= 1, transfer_steps >= 1")
    explicit = [a.name for a in cfg.attacks]
    cfg.ensemble = cfg.ensemble or f"default {d.steps}x{d.eot}" + "".join(f"+{a}" for a in explicit)
    union: dict[str, AttackConfig] = {}
    for m in cfg.methods:
        t = traits(m.name)
        names = []
        for spec in default_attacks(t, steps=d.steps, eot=d.eot, transfer_steps=d.transfer_steps):
            a = _entry(spec, "" if t.randomized else "-det")
            if a.name in explicit:
                raise ConfigError(f"attacks.{a.name}: the name is taken by the default ensemble; rename it")
            union.setdefault(a.name, a)
            names.append(a.name)
        if not m.attacks:
            m.attacks = names + explicit
    cfg.attacks = list(union.values()) + cfg.attacks


# ------------------------------------------------------------------------------------------------ resolving
def load_config(path, overrides=()) -> SweepConfig:
    """Read, override, validate and resolve a sweep config; raises ConfigError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    for o in overrides:
        apply_override(raw, o)
    cfg = _build(SweepConfig, raw, "")
    return validate(resolve_defaults(cfg, base=path.parent))


def _method_label(m: MethodConfig) -> str:
    if m.label:
        return m.label
    return m.name if m.t_star is None else f"{m.name}@{m.t_star:g}"


def resolve_defaults(cfg: SweepConfig, base: Path) -> SweepConfig:
    """Fill every default that depends on other fields, so the stored config says exactly what ran.
    Relative data and model paths are resolved against the config file's directory, out against the current one."""
    cfg = dataclasses.replace(cfg)
    for m in cfg.methods:
        m.label = _method_label(m)
    expand_default_ensemble(cfg)
    for a in cfg.attacks:
        a.grad = a.grad or cfg.grad
        if a.step_size is None and a.steps > 0:
            a.step_size = default_step_size(cfg.eps)
    if not cfg.ensemble:
        cfg.ensemble = "+".join(a.name for a in cfg.attacks)

    def fix(p: str) -> str:
        return "" if not p or p == "digits" else str((base / p).resolve()) if not os.path.isabs(p) else p

    d, m = cfg.data, cfg.model
    d.path, d.labels, d.ids_file, d.class_map = fix(d.path), fix(d.labels), fix(d.ids_file), fix(d.class_map)
    d.split = d.split or DEFAULT_SPLIT.get(d.dataset, "")
    if d.dataset == "cifar100":
        d.label_type = d.label_type or "fine"
    m.diffusion = "digits" if m.diffusion == "digits" else fix(m.diffusion)
    m.classifier = "digits" if m.classifier == "digits" else fix(m.classifier)
    m.aux = m.aux if m.aux in ("", "digits") else fix(m.aux)
    if cfg.out:
        cfg.out = cfg.out if os.path.isabs(cfg.out) else str(Path(cfg.out).resolve())
    return cfg
