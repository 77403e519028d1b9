"""PGD with EOT against a (possibly stochastic) model, and N-fold re-evaluation (METHODS.md §10.2, §10.6).

A model here is `forward(x, seeds) → logits`: seeds (B,) int64 are the per-sample noise seeds of one call, so
every EOT replica and every re-evaluation trial has its own stream, and results do not depend on batch size.
Seeds are derived from (run seed, sample id, purpose, index) — see `attack_seeds`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..reference.philox import derive_seeds

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Salts that separate the attack's EOT draws from the re-evaluation trials (never the same noise).
_ATTACK_SALT, _EVAL_SALT = 1 << 40, 2 << 40


def attack_seeds(run_seed: int, ids: torch.Tensor, salt: int, index: int) -> torch.Tensor:
    """Seeds for draw `index` (EOT replica or trial) of samples `ids` (B,): a pure function of its arguments."""
    per_sample = derive_seeds(run_seed, ids)
    return derive_seeds(per_sample, torch.full_like(ids, salt + index))


@dataclass(frozen=True)
class PGDConfig:
    eps: float
    steps: int
    step_size: float
    eot: int = 1
    norm: str = "linf"          # 'linf' | 'l2'
    random_start: bool = False  # Lee & Kim: none; ADBM: uniform in the ball

    def as_dict(self) -> dict:
        return dict(eps=self.eps, steps=self.steps, step_size=self.step_size, eot=self.eot, norm=self.norm,
                    random_start=self.random_start)


def eot_gradient(forward: Forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, run_seed: int,
                 step: int, eot: int) -> torch.Tensor:
    """Mean over `eot` draws of ∇_x CE_sum(forward(x; fresh noise), y), the batch replicated eot times (vectorised)."""
    x = x.detach().requires_grad_(True)
    B = x.shape[0]
    seeds = torch.cat([attack_seeds(run_seed, ids, _ATTACK_SALT, step * eot + r) for r in range(eot)])
    logits = forward(x.repeat(eot, 1, 1, 1), seeds)
    loss = F.cross_entropy(logits, y.repeat(eot), reduction="sum") / eot
    (grad,) = torch.autograd.grad(loss, x)
    if grad.shape[0] != B:
        raise RuntimeError("gradient shape mismatch")
    return grad


def pgd_eot(forward: Forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, cfg: PGDConfig, *,
            run_seed: int = 0, progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Untargeted PGD maximising cross-entropy, gradient averaged over EOT draws.  Returns x_adv in [0, 1]."""
    x = x.detach()
    x_adv = x.clone()
    if cfg.random_start:
        g = torch.Generator(device="cpu").manual_seed(run_seed)
        delta = (torch.rand(x.shape, generator=g) * 2 - 1).to(x) * cfg.eps
        x_adv = _project(x, (x + delta).clamp(0, 1), cfg)
    for k in range(cfg.steps):
        grad = eot_gradient(forward, x_adv, y, ids, run_seed, k, cfg.eot)
        if cfg.norm == "linf":
            step = cfg.step_size * grad.sign()
        elif cfg.norm == "l2":
            norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            step = cfg.step_size * grad / norm
        else:
            raise ValueError(f"unknown norm {cfg.norm!r}; expected 'linf' or 'l2'")
        x_adv = _project(x, (x_adv + step).clamp(0, 1), cfg)
        if progress is not None:
            progress(k + 1)
    return x_adv.detach()


def _project(x: torch.Tensor, x_adv: torch.Tensor, cfg: PGDConfig) -> torch.Tensor:
    delta = x_adv - x
    if cfg.norm == "linf":
        delta = delta.clamp(-cfg.eps, cfg.eps)
    else:
        n = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * (cfg.eps / n.clamp_min(1e-12)).clamp(max=1.0)
    return (x + delta).clamp(0, 1)


@torch.no_grad()
def reevaluate(forward: Forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, n: int, *,
               run_seed: int = 0, batch: int = 256) -> dict:
    """N fresh purifications of each image (new noise streams): per-sample × per-trial correctness and the
    mean (Avg.Rob), worst-case (all N correct) and majority-vote accuracies (ties → lowest class index)."""
    preds = []
    for j in range(n):
        seeds = attack_seeds(run_seed, ids, _EVAL_SALT, j)
        preds.append(torch.cat([forward(x[b:b + batch], seeds[b:b + batch]).argmax(1)
                                for b in range(0, x.shape[0], batch)]))
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
        "preds": preds.tolist(),
    }
