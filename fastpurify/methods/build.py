"""Purification methods as ready purifiers: DiffPure, GDMP, AGDM and multi-round, for any EpsDiffusion.

`build_method(name, model, aux=None, **overrides)` returns an nn.Module with forward(x, seed=None, round=0, grad=None) and a
`.describe()` dict for reports.  Settings for the embedded digits benchmark were chosen on the validation split
(`fastpurify compare --tune`; its report records the grid and the choice); the CIFAR-10 ones follow docs/METHODS.md.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from ..api import Purifier
from .guidance import AGDMConfig, AGDMGuidance, GDMPConfig, GDMPGuidance
from .multiround import MultiRound
from .wrappers import MethodPurifier

# Digits (embedded model): t* in steps of 1000.  Guidance scales from an early `fastpurify compare --tune` on the
# validation split, before the corrected protocol: AGDM s ∈ {0, 3e3, 1e4, 3e4} → 3e3 (robust ties, smallest kept);
# GDMP-MSE a ∈ {1e4, 1e5, 3e5} → 1e4 (robustness fell as a grew).  GDMP-SSIM reuses a, untuned.  The corrected
# tuning (benchmarks/results/cpu/compare/report.json) finds AGDM s ≥ 3000 not eligible (failed stronger-than-exact
# checks) and chooses s 300; the presets are kept so demo, audit and leaderboard figures stay comparable.
DIGITS = {
    "diffpure": dict(preset="diffpure"),
    "agdm": dict(preset="agdm", agdm=AGDMConfig(scale=3000.0, feature_layer="features")),
    "gdmp-mse": dict(preset="gdmp", rounds=2, gdmp=GDMPConfig(distance="mse", guide_scale=1e4, ptb=0.15 * 255,
                                                            reduction="per_sample_mean")),
    "gdmp-ssim": dict(preset="gdmp", rounds=2, gdmp=GDMPConfig(distance="ssim", guide_scale=1e4, ptb=0.15 * 255,
                                                             reduction="per_sample_mean")),
    "multiround": dict(rounds_t=[30, 30, 50]),
}


def build_method(name: str, model, aux: nn.Module | None = None, *, t_star=None, settings: dict | None = None,
                 backend: str | None = None) -> MethodPurifier:
    """name ∈ {'diffpure', 'agdm', 'gdmp-mse', 'gdmp-ssim', 'multiround'}; settings default to DIGITS[name]; a
    'steps' entry respaces every round's sampler to that many network calls (default: the preset's)."""
    if settings is None:
        if name not in DIGITS:
            raise ValueError(f"unknown method {name!r}; known: {', '.join(DIGITS)}")
        settings = DIGITS[name]
    s = dict(settings)
    if name.startswith("agdm"):
        if aux is None:
            raise ValueError("AGDM needs the auxiliary network (aux=...), e.g. fastpurify.zoo.digits_aux()")
        cfg = s["agdm"]
        pur = Purifier(model, s["preset"], t_star=t_star, steps=s.get("steps"), backend=backend,
                       guidance=AGDMGuidance(aux, cfg))
        return MethodPurifier(name, pur, {"config": pur.config.as_dict(), "guidance": cfg.as_dict(),
                                          "nfe": pur.config.nfe, "aux_forward_backward": pur.config.nfe})
    if name.startswith("gdmp"):
        cfg = s["gdmp"]
        rounds = [Purifier(model, s["preset"], t_star=t_star, steps=s.get("steps"), backend=backend,
                           guidance=GDMPGuidance(cfg))
                  for _ in range(s.get("rounds", 1))]
        mr = MultiRound(rounds)
        return MethodPurifier(name, mr, {"config": rounds[0].config.as_dict(), "rounds": len(rounds),
                                         "guidance": cfg.as_dict(), "nfe": mr.nfe})
    if name.startswith("multiround"):
        rounds = [Purifier(model, "ddpm", t_star=k, steps=s.get("steps"), backend=backend) for k in s["rounds_t"]]
        mr = MultiRound(rounds)
        return MethodPurifier(name, mr, {"config": rounds[0].config.as_dict(), "rounds_t": list(s["rounds_t"]),
                                         "nfe": mr.nfe})
    pur = Purifier(model, s.get("preset", name), t_star=t_star, steps=s.get("steps"), backend=backend)
    return MethodPurifier(name, pur, {"config": pur.config.as_dict(), "nfe": pur.config.nfe})


def with_scale(name: str, scale: float) -> dict:
    """DIGITS[name] with its guidance scale replaced (for tuning sweeps and the s = 0 identity)."""
    s = dict(DIGITS[name])
    if "agdm" in s:
        s["agdm"] = replace(s["agdm"], scale=scale)
    elif "gdmp" in s:
        s["gdmp"] = replace(s["gdmp"], guide_scale=scale)
    else:
        raise ValueError(f"method {name!r} has no guidance scale")
    return s
