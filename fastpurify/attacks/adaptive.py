"""Adaptive attacks on a whole defence (docs/EVALUATION.md rules 1 and 4): one `AttackSpec` per attack, run by `run_attack`.

A `Defence` is classifier ∘ purifier, plus the components an adaptive attacker also targets: an auxiliary network
(AGDM's φ, whose argmax picks the guidance label and has no gradient through the purifier) and attack-side variants
of the purifier (e.g. AGDM with the guidance treated as a constant).  Attack kinds (DiffBreak's ℓp list, our own
implementations; arXiv 2411.16598):

| kind           | gradient of                                                           | exact white-box? |
|----------------|-----------------------------------------------------------------------|------------------|
| 'pgd'          | loss(f(P(x))) through the purifier in grad mode `grad` (full, adjoint, bpda, …), or through a variant | grad 'full'/'autograd' on P itself |
| 'apgd'         | as 'pgd', optimised by APGD (attacks/apgd.py: step-size schedule, momentum, restarts) | as 'pgd' |
| 'em'           | as 'pgd', each step's draws weighted by the posterior that they fail (attacks/em_eot.py) | as 'pgd' |
| 'per_step'     | the loss summed over intermediate states of P (DiffAttack-style) plus the output | yes |
| 'joint'        | loss(f(P(x))) + w·min(margin_φ(x), κ): the classifier and the auxiliary decision together | yes |
| 'forward_only' | loss(f(x + c·z)): the forward diffusion's noise only, reverse process skipped (c = √(1−ᾱ)/(2√ᾱ)) | no (transfer) |
| 'blind'        | loss(f(x)): the classifier alone, then transferred                   | no (transfer) |
| 'aux'          | loss(φ(x)): the auxiliary network alone, then transferred            | no (transfer) |

The value an attack optimises and the iterate it keeps (best over its own EOT draws) are its own; the protocol
(`fastpurify.evaluation.protocol`) then judges every candidate on fresh draws of the real defence.
"""

from __future__ import annotations

import math
import time
import zlib
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .. import ops
from ..ops import FORWARD
from .apgd import apgd_eot
from .em_eot import em_eot
from .losses import get_loss, true_class_margin
from .pgd import PGDConfig, pgd_eot

KINDS = ("pgd", "apgd", "em", "per_step", "joint", "forward_only", "blind", "aux")
PIPELINE_KINDS = ("pgd", "apgd", "em")  # white-box attacks on loss(f(P(x))) itself: the masking checks' reference
# Attacks whose loss gradient passes through the purifier (the others attack the classifier or φ alone, or only
# steer the forward noise): they cost a backward through every sampler step.
THROUGH_PURIFIER_KINDS = (*PIPELINE_KINDS, "per_step", "joint")


def default_step_size(eps: float) -> float:
    """eps/4 per step whatever the number of steps (see AttackSpec)."""
    return eps / 4


@dataclass
class Defence:
    """classifier(purifier(x)) and its attackable components.  purifier None: the classifier alone (deterministic).

    purifier: forward(x, seed=, grad=, trace=) → images in [0, 1] (Purifier, MethodPurifier, MultiRound, …).
    aux: an auxiliary network inside the defence (AGDM's φ), attacked directly by 'aux' and 'joint' attacks.
    variants: attack-side purifiers by name (e.g. {'detach': AGDM with guidance_grad='detach'}), for 'pgd' attacks.
    robust_classifier: the classifier is adversarially trained (φ behind DiffPure), so the masking check
    "undefended → ~0 %" does not apply to it (its robustness is measured as a defence of its own).
    """

    name: str
    classifier: nn.Module
    purifier: nn.Module | None = None
    aux: nn.Module | None = None
    variants: dict = field(default_factory=dict)
    robust_classifier: bool = False

    def __post_init__(self):
        # evaluation mode for every network of the defence (dropout / batch-norm statistics off), set here rather
        # than trusted to the caller
        for m in (self.classifier, self.purifier, self.aux, *self.variants.values()):
            if isinstance(m, nn.Module):
                m.eval()

    @property
    def randomized(self) -> bool:
        return self.purifier is not None

    @property
    def forward_noise_known(self) -> bool:
        """The purifier says its forward-diffusion noise level (one of ours: `first_round()`), so the forward-only
        transfer attack applies; a user's black-box purifier does not."""
        return _first_round(self.purifier) is not None

    def logits(self, x: torch.Tensor, seeds: torch.Tensor, *, grad: str | None = None, variant: str | None = None,
               trace: list | None = None) -> torch.Tensor:
        if self.purifier is None:
            return self.classifier(x)
        purifier = self.purifier if variant is None else self.variants[variant]
        kw = {} if trace is None else {"trace": trace}
        return self.classifier(purifier(x, seed=seeds, grad=grad, **kw))

    def forward_fn(self, **kw):
        """forward(x, seeds) → logits for pgd_eot / reevaluate."""
        return lambda x, seeds: self.logits(x, seeds, **kw)

    @property
    def nfe(self) -> int | None:
        """Network evaluations of one purification: counted on the last call when there was one, else configured;
        None for a purifier that says neither."""
        p = self.purifier
        if p is None:
            return 0
        for value in (getattr(p, "last_nfe", None), getattr(p, "nfe", None)):
            if value is not None:
                return int(value)
        cfg = getattr(p, "config", None)
        return None if cfg is None else int(cfg.nfe)

    def describe(self) -> dict:
        d = {"defence": self.name, "randomized": self.randomized, "aux": self.aux is not None,
             "variants": sorted(self.variants), "robust_classifier": self.robust_classifier}
        if self.purifier is not None and hasattr(self.purifier, "describe"):
            d["purifier"] = self.purifier.describe()
        elif self.purifier is not None and hasattr(self.purifier, "grad_config"):
            d["purifier"] = self.purifier.grad_config()
        return d


def _first_round(p):
    """The `Purifier` whose sampler runs first (`PurifierLike.first_round`), or None for a purifier that is not one
    of ours (a user's black box: no schedule to read, so attacks on the forward noise alone do not apply)."""
    first = getattr(p, "first_round", None)
    return first() if callable(first) else None


def _first_config(p):
    """The resolved config and schedule of the first purification round (for the forward-diffusion noise level)."""
    first = _first_round(p)
    if first is None:
        raise ValueError("this purifier has no first_round() (not a fastpurify purifier): its forward-diffusion noise "
                         "level is unknown")
    return first.config, first.model.schedule


@dataclass(frozen=True)
class AttackSpec:
    """One attack of an ensemble.  step_size None → eps/4, whatever the number of steps (Lee & Kim use 0.007 at
    ε 8/255 ≈ 0.22 ε): a run with fewer steps is then exactly a prefix of a longer one, which the convergence check
    relies on (a rule like 2.5·eps/steps would make the half-length prefix a different, shorter-reaching attack).
    Kind 'apgd' ignores step_size: APGD's schedule sets it (2·eps, halved at its checkpoints).

    grad: the purifier's gradient mode for 'pgd' ('full' = exact; 'bpda', 'adjoint', 'surrogate' are weaker or
    approximate); variant: an attack-side purifier of the defence ('pgd' only).  weight, kappa: the auxiliary term
    of 'joint'.  states: intermediate states used by 'per_step' (evenly spaced, plus the output).
    cascade: run after every non-cascaded attack, on every sample except those already at the floor — the chosen
    candidate wrong on every selection *and* every report draw (nothing left to lower; see the protocol); the
    attack's own row then covers the samples it ran on.
    """

    name: str
    kind: str = "pgd"
    loss: str = "ce"
    steps: int = 20
    eot: int = 4
    step_size: float | None = None
    random_start: bool = True
    grad: str = "full"
    variant: str | None = None
    weight: float = 1.0
    kappa: float = 5.0
    states: int = 10
    cascade: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown attack kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        get_loss(self.loss)
        if self.steps < 1 or self.eot < 1 or self.states < 1:
            raise ValueError(f"attack {self.name!r}: need steps >= 1, eot >= 1, states >= 1")
        if self.variant is not None and self.kind != "pgd":
            raise ValueError(f"attack {self.name!r}: a purifier variant is for 'pgd' attacks only")

    @property
    def exact(self) -> bool:
        """An exact-gradient white-box attack on the real pipeline (its loss may add terms: 'per_step', 'joint')."""
        return self.through_purifier and self.grad in ("full", "autograd") and self.variant is None

    @property
    def through_purifier(self) -> bool:
        """Its loss gradient passes through the purifier (exactly or not: BPDA and adjoint count too)."""
        return self.kind in THROUGH_PURIFIER_KINDS

    @property
    def reference(self) -> bool:
        """Exact PGD/APGD/EM on loss(f(P(x))) alone: what the masking checks compare every other attack with."""
        return self.exact and self.kind in PIPELINE_KINDS

    @property
    def transfer(self) -> bool:
        """Optimised on something other than the true gradient of the defence (BPDA, surrogates, components)."""
        return not self.exact

    def seed_for(self, run_seed: int) -> int:
        """Each attack draws its own noise: the run seed salted by a stable hash of the attack's name."""
        return run_seed + zlib.crc32(self.name.encode())

    def as_dict(self) -> dict:
        return {**asdict(self), "exact": self.exact}


def _st_clamp01(v: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] in value; straight-through in gradient (no masking by our own clamp)."""
    return v + (v.clamp(0, 1) - v).detach()


def objective_for(defence: Defence, spec: AttackSpec):
    """objective(x, seeds, y) → (loss (B,), logits (B, classes)) of one attack kind (see the module docstring)."""
    loss_fn = get_loss(spec.loss)
    if spec.kind in ("aux", "joint") and defence.aux is None:
        raise ValueError(f"attack {spec.name!r} ({spec.kind}) needs a defence with an auxiliary network")
    if spec.kind in ("per_step", "joint", "forward_only") and defence.purifier is None:
        raise ValueError(f"attack {spec.name!r} ({spec.kind}) needs a purifier")

    if spec.kind in PIPELINE_KINDS:
        def objective(x, seeds, y):
            logits = defence.logits(x, seeds, grad=spec.grad, variant=spec.variant)
            return loss_fn(logits, y), logits
    elif spec.kind == "per_step":
        def objective(x, seeds, y):
            trace = []
            logits = defence.logits(x, seeds, grad=spec.grad, trace=trace)
            picked = [trace[round(j)] for j in torch.linspace(0, len(trace) - 1, min(spec.states, len(trace)))
                      .tolist()] if trace else []
            terms = [loss_fn(defence.classifier(_st_clamp01(s)), y) for s in picked] + [loss_fn(logits, y)]
            return torch.stack(terms).mean(0), logits
    elif spec.kind == "joint":
        def objective(x, seeds, y):
            logits = defence.logits(x, seeds, grad=spec.grad)
            aux_margin = -true_class_margin(defence.aux(x), y)  # > 0 once φ is fooled
            return loss_fn(logits, y) + spec.weight * aux_margin.clamp(max=spec.kappa), logits
    elif spec.kind == "forward_only":
        cfg, sched = _first_config(defence.purifier)
        backend = _first_round(defence.purifier).backend
        abar = float(sched.alphas_cumprod[cfg.k - 1])
        c = math.sqrt(1.0 - abar) / (2.0 * math.sqrt(abar))  # x-scale noise of u_t/√ᾱ mapped back to [0, 1]

        def objective(x, seeds, y):
            z = ops.normal(seeds, tuple(x.shape), step=0, purpose=FORWARD, backend=backend).to(x)
            logits = defence.classifier(_st_clamp01(x + c * z))
            return loss_fn(logits, y), logits
    elif spec.kind == "blind":
        def objective(x, seeds, y):
            logits = defence.classifier(x)
            return loss_fn(logits, y), logits
    else:  # aux
        def objective(x, seeds, y):
            logits = defence.aux(x)
            return loss_fn(logits, y), logits
    return objective


def pgd_config_for(spec: AttackSpec, defence: Defence, eps: float, norm: str, eot_chunk: int | None = None
                   ) -> PGDConfig:
    """The PGD settings of an attack; deterministic surrogates ('blind', 'aux', a defence without a purifier) need
    one draw per step, whatever eot says."""
    deterministic = spec.kind in ("blind", "aux") or not defence.randomized
    eot = 1 if deterministic else spec.eot
    step_size = spec.step_size if spec.step_size is not None else default_step_size(eps)
    # the random start draws its noise with the purifier's op backend (a forced backend holds for the whole attack)
    backend = getattr(_first_round(defence.purifier), "backend", None)
    return PGDConfig(eps=eps, steps=spec.steps, step_size=step_size, eot=eot, norm=norm,
                     random_start=spec.random_start, eot_chunk=eot_chunk, loss=spec.loss, backend=backend)


def run_attack(defence: Defence, spec: AttackSpec, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, *,
               eps: float, norm: str = "linf", run_seed: int = 0, eot_chunk: int | None = None,
               progress=None) -> tuple[torch.Tensor, dict]:
    """Run one attack; returns (x_adv, stats) with the PGD curve, zero-gradient fractions, seconds and NFE."""
    cfg = pgd_config_for(spec, defence, eps, norm, eot_chunk)
    seed = spec.seed_for(run_seed)
    stats: dict = {}
    t0 = time.perf_counter()
    if spec.kind == "apgd":
        x_adv = apgd_eot(objective_for(defence, spec), x, y, ids, cfg, run_seed=seed, progress=progress, stats=stats)
    elif spec.kind == "em":
        x_adv = em_eot(objective_for(defence, spec), x, y, ids, cfg, run_seed=seed, progress=progress, stats=stats)
    else:
        x_adv = pgd_eot(None, x, y, ids, cfg, run_seed=seed, objective=objective_for(defence, spec),
                        progress=progress, stats=stats)
    uses_purifier = spec.through_purifier
    # forward NFE per image: one purification per EOT draw and step (+ the final best-iterate evaluation);
    # 'full' recomputes every step once more in the backward pass.
    draws = cfg.eot * (cfg.steps + (1 if cfg.best_iterate else 0))
    nfe = (None if defence.nfe is None else defence.nfe * draws) if uses_purifier else 0
    stats.update(seconds=round(time.perf_counter() - t0, 3), nfe_attack=nfe, pgd=cfg.as_dict(), seed=seed)
    if spec.kind == "apgd":  # its step size is its own schedule, whatever step_size says
        stats["step_size_rule"] = "APGD: 2·eps, halved at the checkpoints (attacks/apgd.py); step_size unused"
    return x_adv, stats


def default_attacks(defence: Defence, *, steps: int = 20, eot: int = 4, transfer_steps: int = 100,
                    extended: bool = False) -> list[AttackSpec]:
    """The attack list the protocol runs by default (docs/EVALUATION.md rules 1, 3, 4).

    Every defence: PGD with exact gradients and CE (random start), APGD with CE and with DLR (our APGD-EOT:
    a candidate for every sample), a margin-loss restart.  A randomised defence
    adds BPDA (the weaker attack: a masking check), the classifier alone ('blind') and the forward noise alone
    ('forward_only') as transfer attacks.  A defence with an auxiliary network adds attacks on it alone (CE and
    margin, transferred), the joint loss with exact gradients, and every purifier variant it declares (e.g.
    guidance treated as a constant).  extended=True adds DLR, the per-step loss and the VP-SDE adjoint where it
    applies (the rest of DiffBreak's ℓp list).  Deterministic attacks get max(steps, 50) iterations.
    """
    det_steps = max(steps, 50)
    if not defence.randomized:
        return [AttackSpec("pgd-ce", steps=det_steps, eot=1),
                AttackSpec("apgd-ce", kind="apgd", steps=det_steps, eot=1),
                AttackSpec("apgd-dlr", kind="apgd", loss="dlr", steps=det_steps, eot=1),
                AttackSpec("pgd-margin", loss="margin", steps=det_steps, eot=1)]
    attacks = [AttackSpec("pgd-ce", steps=steps, eot=eot),
               AttackSpec("apgd-ce", kind="apgd", steps=steps, eot=eot),
               AttackSpec("apgd-dlr", kind="apgd", loss="dlr", steps=steps, eot=eot),
               AttackSpec("pgd-margin", loss="margin", steps=steps, eot=eot, cascade=True),
               AttackSpec("bpda", grad="bpda", steps=steps, eot=eot),
               AttackSpec("blind", kind="blind", steps=det_steps, eot=1)]
    if defence.forward_noise_known:
        attacks.append(AttackSpec("forward-only", kind="forward_only", steps=steps, eot=eot))
    if defence.aux is not None:
        attacks += [AttackSpec("aux-ce", kind="aux", steps=transfer_steps, eot=1),
                    AttackSpec("aux-margin", kind="aux", loss="margin", steps=transfer_steps, eot=1),
                    AttackSpec("joint", kind="joint", loss="ce", steps=steps, eot=eot)]
    attacks += [AttackSpec(f"pgd-{name}", variant=name, steps=steps, eot=eot, cascade=True)
                for name in sorted(defence.variants)]
    if extended:
        attacks += [AttackSpec("pgd-dlr", loss="dlr", steps=steps, eot=eot, cascade=True),
                    AttackSpec("per-step", kind="per_step", steps=steps, eot=eot, cascade=True)]
        first = _first_round(defence.purifier)
        if first is not None and first.config.preset.sampler == "vpsde" and defence.aux is None and not defence.variants:
            attacks.append(AttackSpec("adjoint", grad="adjoint", steps=steps, eot=eot, cascade=True))
    return attacks
