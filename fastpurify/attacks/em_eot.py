"""EM-weighted EOT: an attack on the weakness that many purification runs share (our own implementation, in the
spirit of DiffHammer's EM aggregation, Wang et al. 2024).

Plain PGD-EOT steps along the *mean* loss gradient over the step's purification draws.  When the purifier's
randomness splits into parts where the image is vulnerable in different (or no) directions, the mean mixes them and
the sign step may serve none.  The threat that matters for a randomised purifier is the N-evaluation one: an image
counts as broken when *any* of N purifications is wrong.  For one step's draws r = 1..R with failure probabilities
p_r = 1 − softmax(f(P_r(x)))_y, P(some draw wrong) ≈ Σ_r p_r while the p_r are small, so the attack ascends
J(x) = log Σ_r p_r.  Jensen's inequality gives the EM bound

    log Σ_r p_r  ≥  Σ_r w_r log(p_r / w_r)     for every distribution w over the draws,

tight at w_r = p_r / Σ_s p_s: the posterior that draw r is the one that fails, given that one does — i.e. that it
lies in the set of draws sharing the image's vulnerability.  E-step: that posterior, from each draw's logits at the
current iterate.  M-step: one projected ascent step along Σ_r w_r ∇ℓ_r, ℓ the attack's loss (CE, margin, DLR):
only the aggregation of the draws changes, so uniform weights give exactly PGD-EOT's iterates (the test oracle).
Draws the purifier makes confidently right get almost no weight; draws near the boundary or already wrong lead.

Seeds, EOT rows, chunking, random start, step and best-iterate rule are pgd_eot's (attacks/pgd.py): results depend
on (run seed, sample id, step, draw) only, not on batch size or chunking.  Memory: each row's input gradient is
kept until the step's weights are known (R × the batch's images), instead of being summed on the fly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .losses import true_class_margin
from .pgd import Objective, PGDConfig, _draws, ascend


def failure_log_prob(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p (rows,): log of the probability mass the classifier puts on every class but y, computed stably
    (logsumexp over j ≠ y minus logsumexp over all j) so a confidently right draw keeps its ordering, not −inf."""
    z = logits.double()
    others = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf"))
    return others.logsumexp(1) - z.logsumexp(1)


def posterior_weights(log_p: torch.Tensor) -> torch.Tensor:
    """E-step: w_r = p_r / Σ_s p_s over the draws of each sample.  log_p (draws, B) → weights (draws, B), each
    column a distribution (float64)."""
    return torch.softmax(log_p, dim=0)


def uniform_weights(log_p: torch.Tensor) -> torch.Tensor:
    """Every draw alike: the weighting of plain PGD-EOT (the reduction the tests check)."""
    return torch.full_like(log_p, 1.0 / log_p.shape[0])


WEIGHTINGS = {"posterior": posterior_weights, "uniform": uniform_weights}


def weighted_eot_pass(objective: Objective, x, y, ids, run_seed: int, step: int, cfg: PGDConfig, weighting: str,
                      with_grad: bool = True):
    """One step's EOT draws (pgd_eot's rows and seeds): per sample the weighted gradient Σ_r w_r ∇ℓ_r (zeros when
    with_grad is False), the plain means over draws of the loss, accuracy and true-class margin, and the weights
    (draws, B)."""
    x = x.detach()
    B, eot = x.shape[0], cfg.eot
    sample, seeds = _draws(x, y, ids, run_seed, step, eot, False)
    rows = sample.shape[0]
    chunk = rows if cfg.eot_chunk is None else cfg.eot_chunk
    row_grad = (torch.empty if with_grad else torch.zeros)((rows, *x.shape[1:]), dtype=x.dtype, device=x.device)
    row_value, row_correct, row_margin, row_log_p = (torch.empty(rows, dtype=torch.float64, device=x.device)
                                                     for _ in range(4))
    for s in range(0, rows, chunk):
        idx = sample[s:s + chunk]
        with torch.set_grad_enabled(with_grad):
            xc = x[idx].requires_grad_(with_grad)
            value, logits = objective(xc, seeds[s:s + chunk], y[idx])
            if with_grad:  # value.sum() / eot as pgd_eot differentiates it: uniform weights then give its gradient
                (row_grad[s:s + chunk],) = torch.autograd.grad(value.sum() / eot, xc)
        logits = logits.detach()
        row_value[s:s + chunk] = value.detach().double()
        row_correct[s:s + chunk] = (logits.argmax(1) == y[idx]).double()
        row_margin[s:s + chunk] = true_class_margin(logits, y[idx]).double()
        row_log_p[s:s + chunk] = failure_log_prob(logits, y[idx])
    weights = WEIGHTINGS[weighting](row_log_p.view(eot, B))
    # the rows already carry 1/eot, so each is scaled by eot·w_r (exactly 1 for uniform weights)
    scale = (weights * eot).reshape(rows).to(x.dtype).view(-1, *[1] * (x.dim() - 1))
    grad = torch.zeros_like(x).index_add_(0, sample, row_grad * scale)
    means = [torch.zeros(B, dtype=torch.float64, device=x.device).index_add_(0, sample, v / eot)
             for v in (row_value, row_correct, row_margin)]
    return grad, *means, weights


def em_eot(objective: Objective, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, cfg: PGDConfig, *,
           run_seed: int = 0, weighting: str = "posterior", progress: Callable[[int], None] | None = None,
           stats: dict | None = None) -> torch.Tensor:
    """PGD whose step follows the EM-weighted gradient over cfg.eot fresh draws per step (module docstring).
    Returns each sample's best iterate (lowest EOT accuracy, then margin; the final iterate evaluated too) or, with
    cfg.best_iterate False, the last one.  stats as pgd_eot's, plus 'effective_draws': per step the mean over
    samples of 1 / Σ_r w_r² (cfg.eot for uniform weights, 1 when one draw carries all the weight)."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")
    if cfg.fixed_noise:
        raise ValueError("EM-EOT weighs fresh draws against each other; fixed_noise is for pgd_eot")

    def step_pass(x_k, k, with_grad):
        grad, loss, acc, margin, w = weighted_eot_pass(objective, x_k, y, ids, run_seed, k, cfg, weighting,
                                                       with_grad=with_grad)
        return grad, loss, acc, margin, float((1.0 / (w * w).sum(0)).mean())

    x_adv, curves, effective = ascend(step_pass, x, ids, cfg, run_seed, progress)
    if stats is not None:
        stats.update(curves, effective_draws=effective)
    return x_adv
