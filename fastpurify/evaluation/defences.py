"""Named defences for the protocol: a method's purifier in front of a classifier, with the components and
attack-side variants an adaptive attacker targets, and the honest baselines (docs/EVALUATION.md rule 7)."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from ..attacks.adaptive import Defence
from ..methods import DIGITS, build_method

# 'none': the classifier alone; 'aux': the auxiliary (TRADES) network alone; 'diffpure+aux': DiffPure in front of
# the auxiliary network (the purifier AGDM builds on, with AGDM's robust classifier); the rest are build_method's.
BASELINES = ("none", "aux", "diffpure+aux")


def build_defence(name: str, model, classifier, aux=None, *, settings: dict | None = None, t_star=None,
                  backend: str | None = None) -> Defence:
    """A Defence by name: a baseline of BASELINES or a method of `fastpurify.methods` (settings default to DIGITS).
    AGDM gets its auxiliary network as a component and a 'detach' variant (guidance treated as a constant by the
    attack gradient), so the default attack list includes the attacks on φ, the joint loss and that variant."""
    if name == "none":
        return Defence("none", classifier)
    if name in ("aux", "diffpure+aux"):
        if aux is None:
            raise ValueError(f"defence {name!r} needs the auxiliary network (aux=...)")
        if name == "aux":
            return Defence("aux", aux)
        pur = build_method("diffpure", model, t_star=t_star, settings=settings, backend=backend)
        return Defence("diffpure+aux", aux, pur, robust_classifier=True)
    pur = build_method(name, model, aux, t_star=t_star, settings=settings, backend=backend)
    if not name.startswith("agdm"):
        return Defence(name, classifier, pur)
    s = dict(settings if settings is not None else DIGITS[name])
    s["agdm"] = replace(s["agdm"], guidance_grad="detach")
    detach = build_method(name, model, aux, t_star=t_star, settings=s, backend=backend)
    return Defence(name, classifier, pur, aux=aux, variants={"detach": detach})


def traits(name: str) -> SimpleNamespace:
    """What the default attack list and the masking checks depend on (randomized, aux, variants, robust_classifier),
    from a defence's name alone, without building it: the same as build_defence gives (tested), for sweep configs
    and reports that have no models loaded.  Names that are not baselines or AGDM are purifiers (methods or presets)
    in front of the classifier."""
    agdm = name.startswith("agdm")
    randomized = name not in ("none", "aux")
    return SimpleNamespace(name=name, randomized=randomized, aux=True if agdm else None,
                           variants={"detach": None} if agdm else {}, robust_classifier=name == "diffpure+aux",
                           forward_noise_known=randomized)  # every purifier the package builds says it
