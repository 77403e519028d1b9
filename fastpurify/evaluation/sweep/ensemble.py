"""`[default_ensemble]` of a sweep config: the protocol's default attack list per method
(`fastpurify.attacks.default_attacks`: PGD with exact gradients, CE and a margin restart, BPDA, blind and
forward-only transfers, and for AGDM the attacks on φ, the joint loss and the detached-guidance variant), written
out as explicit [[attacks]] entries and per-method attack lists when the config is read, so the stored config says
exactly what ran.  Deterministic defences (none, aux) get PGD with more steps and one draw, named '-det'.
"""

from __future__ import annotations

from ...attacks.adaptive import default_attacks
from ..defences import traits
from .config import AttackConfig, ConfigError, SweepConfig

FIELDS = ("kind", "loss", "steps", "eot", "step_size", "random_start", "variant", "weight", "kappa", "states",
          "cascade")


def _entry(spec, suffix: str) -> AttackConfig:
    d = spec.as_dict()
    return AttackConfig(name=spec.name + suffix, grad=spec.grad,
                        **{k: ("" if k == "variant" and d[k] is None else d[k]) for k in FIELDS})


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
