"""APGD with EOT (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", Algorithm 1), written for this harness: per-sample seeds, chunked EOT, CE / DLR / margin
losses on any objective, and an attacked candidate returned for *every* sample (no early stop on success, no
clean image handed back for a sample the attack did not break).

The schedule, as in the paper:
- step size η starts at 2ε (ℓ∞ and ℓ2), per sample;
- momentum α = 0.75: x_{k+1} = P(x_k + α(z_{k+1} − x_k) + (1 − α)(x_k − x_{k−1})), z_{k+1} = P(x_k + η ∇f(x_k))
  (ℓ∞: sign of the gradient; ℓ2: the gradient normalised);
- checkpoints w_j = ⌈p_j · N⌉ with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06);
- at a checkpoint η halves (and the iterate restarts from the best point x_max, with its gradient) where
  (1) fewer than ρ = 0.75 of the steps since the last checkpoint increased f, or
  (2) neither η nor the best value f_max changed since the last checkpoint.
f is the EOT mean of the loss (fresh draws every step, as the gradient).  Our choice where the paper leaves it
open: a restart also drops the momentum (x_{k−1} := x_max).

The returned candidate is, per sample, the iterate with the lowest EOT accuracy (then lowest true-class margin),
as `pgd_eot` returns; the restart point x_max is the iterate with the highest f.  stats as `pgd_eot`'s, plus
'eta' (each sample's final step size) and 'checkpoints'.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .pgd import Best, Objective, PGDConfig, _eot_pass, _project, _zero_gradients, random_start

ALPHA, RHO = 0.75, 0.75


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j (0 < w_j < steps) at which the step size may halve."""
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    w = {math.ceil(round(q * steps, 9)) for q in p[1:]}  # rounded: 0.22 + 0.19 must give 41, not 42, of 100
    return sorted(k for k in w if 0 < k < steps)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


def _ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / _view(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)


def apgd_eot(objective: Objective, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, cfg: PGDConfig, *,
             run_seed: int = 0, progress: Callable[[int], None] | None = None, stats: dict | None = None
             ) -> torch.Tensor:
    """APGD maximising `objective` (EOT mean over cfg.eot draws per step).  cfg.step_size is not used (the
    schedule above sets it); cfg.steps ≥ 1 iterations, each one EOT pass with gradients, plus one final pass."""
    if cfg.steps < 1:
        raise ValueError("APGD needs steps >= 1")
    if cfg.fixed_noise:
        raise ValueError("APGD-EOT draws fresh noise every step; fixed_noise is for pgd_eot")
    x = x.detach()
    x_k = random_start(x, ids, cfg, run_seed) if cfg.random_start else x.clone()
    eta = torch.full((x.shape[0],), 2.0 * cfg.eps, dtype=x.dtype, device=x.device)
    best = Best(x_k)
    ckpts, last_w = checkpoints(cfg.steps), 0
    curve_loss, curve_acc, zero, zero_elem = [], [], [], []
    x_prev = x_k
    f_prev = f_max = x_max = g_max = None
    n_up = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    half = None
    for k in range(cfg.steps):
        grad, loss, acc, margin = _eot_pass(objective, x_k, y, ids, run_seed, k, cfg.eot, cfg.eot_chunk, False, True)
        best.offer(x_k, acc, margin)
        if k == cfg.steps // 2:  # the best candidate of the first half of this run (the convergence check)
            half = best.x.clone()
        curve_loss.append(float(loss.mean())), curve_acc.append(float(acc.mean()))
        zero_frac, zero_elem_frac = _zero_gradients(grad, acc)
        zero.append(zero_frac), zero_elem.append(zero_elem_frac)
        if f_max is None:
            f_max, x_max, g_max = loss.clone(), x_k.clone(), grad.clone()
            eta_w, fmax_w = eta.clone(), f_max.clone()
        else:
            n_up += (loss > f_prev).double()
            up = loss > f_max
            x_max, g_max = torch.where(_view(up, x_k), x_k, x_max), torch.where(_view(up, x_k), grad, g_max)
            f_max = torch.where(up, loss, f_max)
        f_prev = loss
        if k in ckpts:
            halve = (n_up < RHO * (k - last_w)) | ((eta == eta_w) & (f_max == fmax_w))
            eta = torch.where(halve, eta / 2, eta)
            x_k = torch.where(_view(halve, x_k), x_max, x_k)
            x_prev = torch.where(_view(halve, x_k), x_max, x_prev)  # a restart drops the momentum
            grad = torch.where(_view(halve, x_k), g_max, grad)
            f_prev = torch.where(halve, f_max, f_prev)
            n_up.zero_()
            last_w, eta_w, fmax_w = k, eta.clone(), f_max.clone()
        z = _project(x, (x_k + _view(eta, x_k) * _ascent(grad, cfg.norm)).clamp(0, 1), cfg)
        step = ALPHA * (z - x_k) + (1 - ALPHA) * (x_k - x_prev) if k > 0 else z - x_k
        x_prev, x_k = x_k, _project(x, (x_k + step).clamp(0, 1), cfg)
        if progress is not None:
            progress(k + 1)
    _, _, acc, margin = _eot_pass(objective, x_k, y, ids, run_seed, cfg.steps, cfg.eot, cfg.eot_chunk, False, False)
    best.offer(x_k, acc, margin)
    curve_acc.append(float(acc.mean()))
    if stats is not None:
        if half is not None:
            stats["half_steps_x_adv"] = half.detach()
        stats.update(loss=curve_loss, acc=curve_acc, best_acc=best.curve, zero_grad_frac=zero[0],
                     zero_grad_frac_max=max(zero), zero_grad_elem_frac=zero_elem[0],
                     zero_grad_elem_frac_max=max(zero_elem), eta=eta.tolist(), checkpoints=ckpts)
    return best.x.detach()
