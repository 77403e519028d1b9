"""PGD with EOT against a (possibly stochastic) model, and N-fold re-evaluation (docs/METHODS.md §10.2, §10.6).

A model here is `forward(x, seeds) → logits`: seeds (B,) int64 are the per-sample noise seeds of one call, so
every EOT replica and every re-evaluation trial has its own stream, and results do not depend on batch size or on
how the EOT rows are chunked.  Seeds are derived from (run seed, sample id, purpose, index) — see `attack_seeds`.
`fastpurify.attacks.as_forward` turns a PurifiedClassifier (or any classifier) into such a forward.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..ops import FORWARD, derive_seeds, streams
from .losses import get_loss, true_class_margin

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# objective(x, seeds, y) → (loss to maximise (B,), logits (B, classes) of the attacked model, for tracking)
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# Salts that separate the attack's EOT draws, the fixed-noise draw, random starts and the re-evaluation trials.
_ATTACK_SALT, _EVAL_SALT, _FIXED_SALT, _START_SALT, _SELECT_SALT = (streams.ATTACK, streams.EVAL, streams.FIXED,
                                                                  streams.START, streams.SELECT)


def attack_seeds(run_seed: int, ids: torch.Tensor, salt: int, index: int) -> torch.Tensor:
    """Seeds for draw `index` (EOT replica or trial) of samples `ids` (B,): a pure function of its arguments."""
    per_sample = derive_seeds(run_seed, ids)
    return derive_seeds(per_sample, torch.full_like(ids, salt + index))


def fixed_noise_seeds(run_seed: int, ids: torch.Tensor) -> torch.Tensor:
    """The one noise draw per sample that a fixed-noise (deterministic white-box) attack and its evaluation share."""
    return attack_seeds(run_seed, ids, _FIXED_SALT, 0)


def objective_from(forward: Forward, loss: str = "ce") -> Objective:
    """The usual objective: a loss of `get_loss` on the logits forward(x, seeds)."""
    fn = get_loss(loss)

    def objective(x, seeds, y):
        logits = forward(x, seeds)
        return fn(logits, y), logits

    return objective


@dataclass(frozen=True)
class PGDConfig:
    """PGD-EOT settings.  eot_chunk changes memory only, never the result (per-sample seeds)."""

    eps: float
    steps: int
    step_size: float
    eot: int = 1
    norm: str = "linf"              # 'linf' | 'l2'
    random_start: bool = False      # Lee & Kim: none; ADBM: uniform in the ball
    l2_step: str = "normalized"     # ℓ2 only: 'normalized' (ADBM) | 'sign' (Lee & Kim's pgd_eot_l2: sign step, then ℓ2 ball)
    eot_chunk: int | None = None    # most rows (image × EOT replica) per forward call; None = all at once
    fixed_noise: bool = False       # the same noise at every step (deterministic white-box); needs eot = 1
    loss: str = "ce"                # 'ce' | 'margin' | 'dlr' (attacks/losses.py); ignored when an objective is given
    best_iterate: bool = True       # return each sample's iterate with the lowest EOT accuracy (then margin)
    backend: str | None = None      # ops backend of the random start's noise (the purifier's; None = automatic)

    def __post_init__(self):
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {self.norm!r}; expected 'linf' or 'l2'")
        if self.l2_step not in ("normalized", "sign"):
            raise ValueError(f"unknown l2_step {self.l2_step!r}; expected 'normalized' or 'sign'")
        if self.eot < 1 or self.steps < 0 or (self.eot_chunk is not None and self.eot_chunk < 1):
            raise ValueError(f"need eot >= 1, steps >= 0, eot_chunk >= 1 or None; got {self}")
        if not (self.eps >= 0 and self.step_size >= 0):
            raise ValueError(f"need eps >= 0 and step_size >= 0; got eps={self.eps}, step_size={self.step_size}")
        if self.fixed_noise and self.eot != 1:
            raise ValueError("fixed_noise replays one noise draw: use eot = 1 (docs/METHODS.md §9)")
        get_loss(self.loss)

    def as_dict(self) -> dict:
        return asdict(self)


def _draws(x, y, ids, run_seed, step, eot, fixed):
    """Rows of one EOT evaluation: the batch replicated eot times (row r·B + b = sample b, draw r) and its seeds."""
    B = x.shape[0]
    if fixed:
        seeds = fixed_noise_seeds(run_seed, ids)
    else:
        seeds = torch.cat([attack_seeds(run_seed, ids, _ATTACK_SALT, step * eot + r) for r in range(eot)])
    return torch.arange(B, device=x.device).repeat(eot), seeds


def _eot_pass(objective: Objective, x, y, ids, run_seed, step, eot, chunk, fixed, with_grad: bool):
    """Per sample: the mean over EOT draws of ∇_x loss (zeros when with_grad is False), of the loss, of the
    accuracy and of the true-class margin.  Rows run in chunks of at most `chunk`."""
    x = x.detach()
    B = x.shape[0]
    sample, seeds = _draws(x, y, ids, run_seed, step, eot, fixed)
    chunk = sample.shape[0] if chunk is None else chunk
    grad = torch.zeros_like(x)
    loss, acc, margin = (torch.zeros(B, dtype=torch.float64, device=x.device) for _ in range(3))
    for s in range(0, sample.shape[0], chunk):
        idx = sample[s:s + chunk]
        with torch.set_grad_enabled(with_grad):
            xc = x[idx].requires_grad_(with_grad)
            value, logits = objective(xc, seeds[s:s + chunk], y[idx])
            if with_grad:  # only the input: parameters never get gradients
                (gc,) = torch.autograd.grad(value.sum() / eot, xc)
                # index_add_ adds rows in index order, so every chunking sums a sample's draws in the same order.
                grad.index_add_(0, idx, gc)
        logits = logits.detach()
        loss.index_add_(0, idx, value.detach().double() / eot)
        acc.index_add_(0, idx, (logits.argmax(1) == y[idx]).double() / eot)
        margin.index_add_(0, idx, true_class_margin(logits, y[idx]).double() / eot)
    return grad, loss, acc, margin


def eot_gradient(forward: Forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, run_seed: int,
                 step: int, eot: int, chunk: int | None = None, fixed: bool = False) -> torch.Tensor:
    """Mean over `eot` draws of ∇_x CE(forward(x; fresh noise), y) per sample (vectorised, chunked)."""
    return _eot_pass(objective_from(forward), x, y, ids, run_seed, step, eot, chunk, fixed, True)[0]


def random_start(x: torch.Tensor, ids: torch.Tensor, cfg: PGDConfig, run_seed: int) -> torch.Tensor:
    """Uniform in the ℓ∞ ball (ℓ2: then projected onto the ℓ2 ball), per sample from its own Philox stream."""
    from .. import ops

    z = ops.normal(attack_seeds(run_seed, ids, _START_SALT, 0), tuple(x.shape), step=0, purpose=FORWARD,
                   backend=cfg.backend)
    uniform = 0.5 * (1.0 + torch.erf(z.double() / math.sqrt(2.0)))  # Φ(z) ~ U(0, 1)
    delta = ((2.0 * uniform - 1.0) * cfg.eps).to(x)
    return _project(x, (x + delta).clamp(0, 1), cfg)


def _ascent_step(x: torch.Tensor, x_adv: torch.Tensor, grad: torch.Tensor, cfg: PGDConfig) -> torch.Tensor:
    """One PGD step — along the gradient's sign (ℓ∞, or ℓ2 with l2_step='sign') or its normalised direction —
    projected back onto the ε-ball around x and [0, 1]."""
    if cfg.norm == "linf" or cfg.l2_step == "sign":
        step = cfg.step_size * grad.sign()
    else:
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
        step = cfg.step_size * grad / norm
    return _project(x, (x_adv + step).clamp(0, 1), cfg)


def pgd_eot(forward: Forward | None, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, cfg: PGDConfig, *,
            run_seed: int = 0, objective: Objective | None = None, progress: Callable[[int], None] | None = None,
            stats: dict | None = None) -> torch.Tensor:
    """Untargeted PGD maximising `objective` (default: cfg.loss on forward's logits), gradient averaged over EOT
    draws.  Returns x_adv in [0, 1]: each sample's best iterate (lowest accuracy over its EOT draws, then lowest
    true-class margin; the final iterate is evaluated too) or, with best_iterate=False, the last one.

    stats: if a dict, filled with 'loss' (mean loss per step), 'acc' (mean EOT accuracy of the current iterate per
    step, final iterate last), 'best_acc' (of the best iterate so far), 'half_steps_x_adv' (what the same attack
    with steps // 2 iterations returns: a convergence check), 'zero_grad_frac' (samples whose first
    gradient is exactly zero: AutoAttack's check_zero_gradients), 'zero_grad_elem_frac' (input elements with an
    exactly zero first gradient: masking that hides single pixels) and the worst step of both ('..._max'); both
    among the samples not yet broken on every EOT draw of that step."""
    if objective is None:
        if forward is None:
            raise ValueError("pgd_eot needs a forward or an objective")
        objective = objective_from(forward, cfg.loss)

    def step_pass(x_k, k, with_grad):
        return (*_eot_pass(objective, x_k, y, ids, run_seed, k, cfg.eot, cfg.eot_chunk, cfg.fixed_noise, with_grad),
                None)

    x_adv, curves, _ = ascend(step_pass, x, ids, cfg, run_seed, progress)
    if stats is not None:
        stats.update(curves)
    return x_adv


class Best:
    """The returned candidate per sample: lowest EOT accuracy, then lowest true-class margin; `curve` is the mean
    accuracy of the best so far after every offer."""

    def __init__(self, x):
        self.x, self.acc, self.margin = x.clone(), None, None
        self.curve = []

    def offer(self, x_k, acc, margin):
        better = torch.ones_like(acc, dtype=torch.bool) if self.acc is None else \
            (acc < self.acc) | ((acc == self.acc) & (margin < self.margin))
        self.x = torch.where(better.view(-1, *[1] * (x_k.dim() - 1)), x_k, self.x)
        self.acc = acc if self.acc is None else torch.where(better, acc, self.acc)
        self.margin = margin if self.margin is None else torch.where(better, margin, self.margin)
        self.curve.append(float(self.acc.mean()))


def ascend(step_pass, x: torch.Tensor, ids: torch.Tensor, cfg: PGDConfig, run_seed: int,
           progress: Callable[[int], None] | None = None) -> tuple[torch.Tensor, dict, list]:
    """The projected-ascent loop of pgd_eot and em_eot, which differ only in how a step's EOT draws are combined.
    step_pass(x_k, k, with_grad) → (grad, loss, acc, margin, extra) per sample for step k's draws.  Returns x_adv
    (the best iterate, or the last with best_iterate=False), the stats pgd_eot documents and the per-step extras."""
    x = x.detach()
    x_adv = random_start(x, ids, cfg, run_seed) if cfg.random_start else x.clone()
    best, half = Best(x_adv), None
    loss_curve, acc_curve, zero, zero_elem, extras = [], [], [], [], []
    for k in range(cfg.steps):
        grad, loss, acc, margin, extra = step_pass(x_adv, k, True)
        best.offer(x_adv, acc, margin)
        acc_curve.append(float(acc.mean()))
        if k == cfg.steps // 2:  # what a run with half the steps returns (same seeds: a prefix of this run)
            half = best.x.clone()
        loss_curve.append(float(loss.mean()))
        extras.append(extra)
        zero_frac, zero_elem_frac = _zero_gradients(grad, acc)
        zero.append(zero_frac), zero_elem.append(zero_elem_frac)
        x_adv = _ascent_step(x, x_adv, grad, cfg)
        if progress is not None:
            progress(k + 1)
    if cfg.best_iterate:  # the last iterate has not been evaluated yet: one more EOT pass, no gradient
        _, _, acc, margin, _ = step_pass(x_adv, cfg.steps, False)
        best.offer(x_adv, acc, margin)
        acc_curve.append(float(acc.mean()))
        x_adv = best.x
    stats = {"loss": loss_curve, "acc": acc_curve, "best_acc": best.curve,
             "zero_grad_frac": zero[0] if zero else 0.0, "zero_grad_frac_max": max(zero, default=0.0),
             "zero_grad_elem_frac": zero_elem[0] if zero_elem else 0.0,
             "zero_grad_elem_frac_max": max(zero_elem, default=0.0)}
    if cfg.best_iterate and half is not None:
        stats["half_steps_x_adv"] = half.detach()
    return x_adv.detach(), stats, extras


def _zero_gradients(grad: torch.Tensor, acc: torch.Tensor) -> tuple[float, float]:
    """(fraction of samples whose gradient is exactly zero, fraction of input elements exactly zero) among the
    samples not yet broken on every EOT draw (acc > 0): a loss may flatten once a sample is broken (DLR is
    constant once the true class falls to third place), which is no sign of masking."""
    alive = acc > 0
    if not alive.any():
        return 0.0, 0.0
    g = grad[alive]
    return float((g.flatten(1).abs().amax(1) == 0).float().mean()), float((g == 0).float().mean())


def _project(x: torch.Tensor, x_adv: torch.Tensor, cfg: PGDConfig) -> torch.Tensor:
    delta = x_adv - x
    if cfg.norm == "linf":
        delta = delta.clamp(-cfg.eps, cfg.eps)
    else:
        n = delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
        delta = delta * (cfg.eps / n.clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0, 1)


@torch.no_grad()
def reevaluate(forward: Forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, n: int, *,
               run_seed: int = 0, batch: int = 256, fixed_noise: bool = False, selection: bool = False) -> dict:
    """N fresh purifications of each image (new noise streams, never the attack's): per-sample × per-trial
    predictions and correctness, the per-sample mean true-class margin, and the mean (Avg.Rob), worst-case (all N
    correct), majority-vote (a tie counts as not robust) and logit-average accuracies.  fixed_noise: every trial
    replays the attack's fixed draw (`fixed_noise_seeds`), so the N trials agree; use n = 1.  selection: draw from
    the selection stream instead (picking a per-sample worst candidate on draws that are never reported)."""
    preds, logit_sum, margin = [], None, torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for j in range(n):
        salt = _SELECT_SALT if selection else _EVAL_SALT
        seeds = fixed_noise_seeds(run_seed, ids) if fixed_noise else attack_seeds(run_seed, ids, salt, j)
        logits = torch.cat([forward(x[b:b + batch], seeds[b:b + batch]) for b in range(0, x.shape[0], batch)])
        preds.append(logits.argmax(1))
        margin += true_class_margin(logits, y).double() / n
        logit_sum = logits.double() if logit_sum is None else logit_sum + logits.double()
    preds = torch.stack(preds, dim=1)  # (B, N)
    correct = preds == y[:, None]
    classes = int(max(int(preds.max()), int(y.max()))) + 1
    votes = F.one_hot(preds, classes).sum(1)  # (B, classes)
    # majority-correct: the true class strictly ahead of every other class (a tie is not robust)
    majority_ok = votes.gather(1, y[:, None])[:, 0] > votes.scatter(1, y[:, None], -1).amax(1)
    return {
        "n": n,
        "mean": float(correct.float().mean()),
        "worst": float(correct.all(1).float().mean()),
        "majority": float(majority_ok.float().mean()),
        "logit_average": float((logit_sum.argmax(1) == y).float().mean()),
        "preds": preds.tolist(),
        "correct": correct.int().tolist(),
        "margin": margin.tolist(),
        "ids": ids.tolist(),
    }
