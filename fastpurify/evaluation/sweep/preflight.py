"""Validation before any work: what `fastpurify sweep check`, `fastpurify sweep` and `fastpurify compare` share.

`settings_problems` (config.py, re-exported here) resolves a method's sampler settings the way the build will
(every round's preset with its t* and steps) without any model, so a setting the build would reject (sampler steps
beyond t*, a DDIM preset without steps, a guidance scale on a method without guidance) is named before anything runs.  `preflight` goes on
to do everything the run does before its first batch — open the data, select the ids, decode one image, load both
models (and the auxiliary network), build every defence with its resize, match the attacks — and collects every
problem as one line; `sweep check` prints them (rc 2), the run raises on them before writing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .config import ConfigError, SweepConfig, settings_problems

__all__ = ["Plan", "PreflightError", "preflight", "settings_problems"]


class PreflightError(ConfigError):
    """One or more problems found before any work; `problems` holds one line each."""

    def __init__(self, problems: list[str]):
        self.problems = [" ".join(str(p).split()) for p in problems]  # one line each
        super().__init__("\n".join(self.problems))


@dataclass
class Plan:
    """Everything the run builds before its first batch."""

    data: object
    ids: list[int]
    labels: object
    manifest_text: str
    models: object
    sample: torch.Tensor
    defences: dict
    ensembles: dict
    notes: list[str] = field(default_factory=list)   # what was decided for the user (resize, label rule, left-out attacks)


def _line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _open_data(cfg: SweepConfig, problems: list[str], notes: list[str]):
    from .data import open_dataset, select_ids

    try:
        data = open_dataset(cfg.data)
        ids = select_ids(cfg.data, data)
        labels = data.labels()
    except ConfigError as e:
        problems.append(_line(e) if str(e).startswith("data") else f"data: {_line(e)}")
        return None, None, None, None
    notes += data.notes(ids)
    try:
        sample = data.images(ids[:1])
    except (OSError, ValueError, RuntimeError) as e:  # a corrupt or unreadable image (PIL: OSError)
        problems.append(f"data: cannot decode {data.source(ids[0])}: {_line(e)}")
        sample = None
    return data, ids, labels, sample


def preflight(cfg: SweepConfig) -> Plan:
    """Build what the run builds, before any work; raises PreflightError listing every problem (one line each)."""
    from .build import applicable, attack_specs, build_defence, check_fit, load_models
    from .shards import manifest_lines

    problems: list[str] = []
    notes: list[str] = []
    data, ids, labels, sample = _open_data(cfg, problems, notes)
    models = load_models(cfg, problems, notes)
    defences, ensembles = {}, {}
    if models is not None and sample is not None:
        size = check_fit(models, sample, data, ids, labels, cfg, problems, notes)
        if size is not None:
            for m in cfg.methods:
                try:
                    defences[m.label] = build_defence(m, models, cfg, size)
                except (ConfigError, TypeError, ValueError, KeyError) as e:
                    problems.append(f"methods {m.label!r}: cannot build: {_line(e)}")
    specs = attack_specs(cfg)
    for m in cfg.methods:
        d = defences.get(m.label)
        if d is None:
            continue
        chosen = set(m.attacks or [s.name for s in specs])
        ensembles[m.label] = [s for s in specs if s.name in chosen and applicable(s, d) is None]
        notes += [f"{m.label}: attack {s.name} left out: {applicable(s, d)}" for s in specs
                  if s.name in chosen and applicable(s, d) is not None]
        if not ensembles[m.label]:
            problems.append(f"methods {m.label!r}: no attack of the ensemble applies to it")
    if problems:
        raise PreflightError(problems)
    return Plan(data, ids, labels, manifest_lines(ids, labels, data.source), models, sample, defences, ensembles,
                notes)
