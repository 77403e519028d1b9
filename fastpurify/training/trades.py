"""TRADES adversarial training (Zhang et al. 2019; docs/METHODS.md §8.5) for AGDM's auxiliary network.

    min_φ E[ CE(p_φ(x), y) + β · KL(p_φ(x) ‖ p_φ(x′)) ],   x′ from K steps of sign-PGD on the KL inside the ε-ball,
    started at x + 0.001·N(0, I).  The KL is summed and divided by the batch size (reference implementation).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class TradesConfig:
    beta: float = 6.0
    eps: float = 0.1
    steps: int = 10
    step_size: float = 0.025
    epochs: int = 30
    lr: float = 1e-3
    batch: int = 64
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _kl(logits_adv: torch.Tensor, p_nat: torch.Tensor) -> torch.Tensor:
    """KL(p_nat ‖ softmax(logits_adv)), summed over the batch."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), p_nat, reduction="sum")


def trades_adversary(model: torch.nn.Module, x: torch.Tensor, cfg: TradesConfig, g: torch.Generator) -> torch.Tensor:
    """The inner maximisation: x′ maximising KL(p(x) ‖ p(x′)) in the ℓ∞ ball of radius eps, within [0, 1]."""
    with torch.no_grad():
        p_nat = F.softmax(model(x), dim=1)
    x_adv = (x + 0.001 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    for _ in range(cfg.steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(_kl(model(x_adv), p_nat), x_adv)
        x_adv = x_adv.detach() + cfg.step_size * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - cfg.eps), x + cfg.eps).clamp(0, 1)
    return x_adv.detach()


def train_trades(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TradesConfig,
                 progress=None) -> torch.nn.Module:
    """Train `model` (in place) with TRADES on (x, y); Adam with cosine decay.  Returns the model in eval mode."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n_batches = (len(x) + cfg.batch - 1) // cfg.batch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * n_batches)
    for epoch in range(cfg.epochs):
        perm = torch.randperm(len(x), generator=g)
        for b in range(0, len(x), cfg.batch):
            xb, yb = x[perm[b:b + cfg.batch]], y[perm[b:b + cfg.batch]]
            model.eval()  # the adversary sees the model as it is; no batch-norm statistics are updated by it
            x_adv = trades_adversary(model, xb, cfg, g)
            model.train()
            logits = model(xb)
            robust = _kl(model(x_adv), F.softmax(logits, dim=1)) / len(xb)
            loss = F.cross_entropy(logits, yb) + cfg.beta * robust
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if progress is not None:
            progress(epoch + 1)
    return model.eval()


def pgd_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20,
                 step_size: float | None = None) -> float:
    """Accuracy under ℓ∞ PGD on cross-entropy (no random start), for the card and the tests."""
    from ..attacks import PGDConfig, pgd_eot

    cfg = PGDConfig(eps=eps, steps=steps, step_size=step_size or 2.5 * eps / steps)
    x_adv = pgd_eot(lambda xb, s: model(xb), x, y, torch.arange(len(x)), cfg)
    with torch.no_grad():
        return float((model(x_adv).argmax(1) == y).float().mean())
