"""PGD with EOT against a (possibly stochastic) model, and N-fold re-evaluation (METHODS.md §10.2, §10.6).

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

from ..ops.reference.philox import FORWARD, derive_seeds

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Salts that separate the attack's EOT draws, the fixed-noise draw, random starts and the re-evaluation trials.
_ATTACK_SALT, _EVAL_SALT, _FIXED_SALT, _START_SALT = 1 << 40, 2 << 40, 4 << 40, 5 << 40


def attack_seeds(run_seed: int, ids: torch.Tensor, salt: int, index: int) -> torch.Tensor:
    """Seeds for draw `index` (EOT replica or trial) of samples `ids` (B,): a pure function of its arguments."""
    per_sample = derive_seeds(run_seed, ids)
    return derive_seeds(per_sample, torch.full_like(ids, salt + index))


def fixed_noise_seeds(run_seed: int, ids: torch.Tensor) -> torch.Tensor:
    """The one noise draw per sample that a fixed-noise (deterministic white-box) attack and its evaluation share."""
    return attack_seeds(run_seed, ids, _FIXED_SALT, 0)


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

    def __post_init__(self):
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"unknown norm {self.norm!r}; expected 'linf' or 'l2'")
        if self.l2_step not in ("normalized", "sign"):
            raise ValueError(f"unknown l2_step {self.l2_step!r}; expected 'normalized' or 'sign'")
        if self.eot < 1 or self.steps < 0 or (self.eot_chunk is not None and self.eot_chunk < 1):
            raise ValueError(f"need eot >= 1, steps >= 0, eot_chunk >= 1 or None; got {self}")
        if self.fixed_noise and self.eot != 1:
            raise ValueError("fixed_noise replays one noise draw: use eot = 1 (METHODS.md §9)")

    def as_dict(self) -> dict:
        return asdict(self)


def _grad_and_loss(forward: Forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, run_seed: int,
                   step: int, eot: int, chunk: int | None, fixed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over EOT draws of ∇_x CE(forward(x; noise), y), mean CE) per sample.  The batch is replicated eot
    times (row r·B + b = sample b, draw r) and run in chunks of at most `chunk` rows."""
    x = x.detach()
    B = x.shape[0]
    if fixed:
        seeds = fixed_noise_seeds(run_seed, ids)
    else:
        seeds = torch.cat([attack_seeds(run_seed, ids, _ATTACK_SALT, step * eot + r) for r in range(eot)])
    sample = torch.arange(B, device=x.device).repeat(eot)
    chunk = sample.shape[0] if chunk is None else chunk
    grad, loss = torch.zeros_like(x), torch.zeros(B, dtype=torch.float64, device=x.device)
    for s in range(0, sample.shape[0], chunk):
        idx = sample[s:s + chunk]
        xc = x[idx].requires_grad_(True)
        ce = F.cross_entropy(forward(xc, seeds[s:s + chunk]), y[idx], reduction="none")
        (gc,) = torch.autograd.grad(ce.sum() / eot, xc)  # only the input: parameters never get gradients
        # index_add_ adds rows in index order, so every chunking sums a sample's draws in the same order.
        grad.index_add_(0, idx, gc)
        loss.index_add_(0, idx, ce.detach().double() / eot)
    return grad, loss


def eot_gradient(forward: Forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, run_seed: int,
                 step: int, eot: int, chunk: int | None = None, fixed: bool = False) -> torch.Tensor:
    """Mean over `eot` draws of ∇_x CE(forward(x; fresh noise), y) per sample (vectorised, chunked)."""
    return _grad_and_loss(forward, x, y, ids, run_seed, step, eot, chunk, fixed)[0]


def random_start(x: torch.Tensor, ids: torch.Tensor, cfg: PGDConfig, run_seed: int) -> torch.Tensor:
    """Uniform in the ℓ∞ ball (ℓ2: then projected onto the ℓ2 ball), per sample from its own Philox stream."""
    from .. import ops

    z = ops.normal(attack_seeds(run_seed, ids, _START_SALT, 0), tuple(x.shape), step=0, purpose=FORWARD)
    uniform = 0.5 * (1.0 + torch.erf(z.double() / math.sqrt(2.0)))  # Φ(z) ~ U(0, 1)
    delta = ((2.0 * uniform - 1.0) * cfg.eps).to(x)
    return _project(x, (x + delta).clamp(0, 1), cfg)


def pgd_eot(forward: Forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, cfg: PGDConfig, *,
            run_seed: int = 0, progress: Callable[[int], None] | None = None, stats: dict | None = None
            ) -> torch.Tensor:
    """Untargeted PGD maximising cross-entropy, gradient averaged over EOT draws.  Returns x_adv in [0, 1].

    stats: if a dict, filled with 'loss' (mean CE per step), 'zero_grad_frac' (samples whose first gradient is
    exactly zero: AutoAttack's check_zero_gradients) and 'zero_grad_frac_max' (the worst step)."""
    x = x.detach()
    x_adv = random_start(x, ids, cfg, run_seed) if cfg.random_start else x.clone()
    losses, zero = [], []
    for k in range(cfg.steps):
        grad, loss = _grad_and_loss(forward, x_adv, y, ids, run_seed, k, cfg.eot, cfg.eot_chunk, cfg.fixed_noise)
        losses.append(float(loss.mean()))
        zero.append(float((grad.flatten(1).abs().amax(1) == 0).float().mean()))
        if cfg.norm == "linf" or cfg.l2_step == "sign":
            step = cfg.step_size * grad.sign()
        else:
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
            step = cfg.step_size * grad / norm
        x_adv = _project(x, (x_adv + step).clamp(0, 1), cfg)
        if progress is not None:
            progress(k + 1)
    if stats is not None:
        stats.update(loss=losses, zero_grad_frac=zero[0] if zero else 0.0, zero_grad_frac_max=max(zero, default=0.0))
    return x_adv.detach()


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
               run_seed: int = 0, batch: int = 256, fixed_noise: bool = False) -> dict:
    """N fresh purifications of each image (new noise streams, never the attack's): per-sample × per-trial
    predictions and correctness, and the mean (Avg.Rob), worst-case (all N correct), majority-vote (ties → lowest
    class index) and logit-average accuracies.  fixed_noise: every trial replays the attack's fixed draw
    (`fixed_noise_seeds`), so the N trials agree; use n = 1."""
    preds, logit_sum = [], None
    for j in range(n):
        seeds = fixed_noise_seeds(run_seed, ids) if fixed_noise else attack_seeds(run_seed, ids, _EVAL_SALT, j)
        logits = torch.cat([forward(x[b:b + batch], seeds[b:b + batch]) for b in range(0, x.shape[0], batch)])
        preds.append(logits.argmax(1))
        logit_sum = logits.double() if logit_sum is None else logit_sum + logits.double()
    preds = torch.stack(preds, dim=1)  # (B, N)
    correct = preds == y[:, None]
    classes = int(max(int(preds.max()), int(y.max()))) + 1
    votes = F.one_hot(preds, classes).sum(1)  # (B, classes); argmax returns the lowest index on ties
    majority = votes.argmax(1)
    return {
        "n": n,
        "mean": float(correct.float().mean()),
        "worst": float(correct.all(1).float().mean()),
        "majority": float((majority == y).float().mean()),
        "logit_average": float((logit_sum.argmax(1) == y).float().mean()),
        "preds": preds.tolist(),
        "correct": correct.int().tolist(),
        "ids": ids.tolist(),
    }
