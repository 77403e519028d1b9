"""Sanity checks of an adaptive evaluation (CONVENTIONS.md §2.6; Carlini et al. arXiv 1902.06705).

Each check returns a record {name, passed, value, threshold, detail}; `passed` is None when the inputs were not
given (skipped).  A failed check means the attack, not the defence, is suspect.
"""

from __future__ import annotations

import torch

from .pgd import Forward, PGDConfig, pgd_eot, reevaluate


def _record(name: str, passed, value, threshold, detail: str) -> dict:
    return {"name": name, "passed": passed, "value": value, "threshold": threshold, "detail": detail}


def zero_gradient_fraction(grad: torch.Tensor) -> float:
    """Fraction of samples whose gradient (B, ...) is exactly zero (AutoAttack's check_zero_gradients)."""
    return float((grad.flatten(1).abs().amax(1) == 0).float().mean())


def large_eps_accuracy(forward: Forward, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, *, eps: float = 0.5,
                       steps: int = 5, eot: int = 1, n_eval: int = 2, run_seed: int = 0) -> dict:
    """PGD-EOT at a large ε (default 0.5: almost any image of [0, 1] is reachable); accuracy must fall to ≈0."""
    cfg = PGDConfig(eps=eps, steps=steps, step_size=2.5 * eps / max(steps, 1), eot=eot)
    x_adv = pgd_eot(forward, x, y, ids, cfg, run_seed=run_seed)
    r = reevaluate(forward, x_adv, y, ids, n_eval, run_seed=run_seed + 1)
    return {"eps": eps, "attack": cfg.as_dict(), "n_examples": int(x.shape[0]), "n_reevals": n_eval,
            "mean": r["mean"], "worst": r["worst"], "majority": r["majority"]}


def sanity_checks(*, undefended_acc: float | None = None, large_eps_acc: float | None = None,
                  full_acc: float | None = None, bpda_acc: float | None = None, zero_grad_frac: float | None = None,
                  n: int | None = None, near_zero: float = 0.05, slack: float | None = None) -> list[dict]:
    """The standard checks from measured numbers (accuracies in [0, 1]; n = examples behind full/bpda).

    - undefended classifier at the attack's ε: accuracy ≤ near_zero (else the attack or ε is too weak);
    - large ε against the defence: accuracy ≤ near_zero (else gradients are masked or the attack is broken);
    - BPDA accuracy ≥ full-gradient accuracy − slack (exact gradients must be the stronger attack; slack defaults
      to 2/√n, about two binomial standard deviations at 50 %);
    - zero-gradient detection: no sample may have an all-zero gradient.
    """
    out = []
    if undefended_acc is None:
        out.append(_record("undefended_near_zero", None, None, near_zero, "skipped"))
    else:
        out.append(_record("undefended_near_zero", undefended_acc <= near_zero, undefended_acc, near_zero,
                           "undefended classifier under PGD at the evaluation eps"))
    if large_eps_acc is None:
        out.append(_record("large_eps_near_zero", None, None, near_zero, "skipped"))
    else:
        out.append(_record("large_eps_near_zero", large_eps_acc <= near_zero, large_eps_acc, near_zero,
                           "purified classifier under PGD-EOT at a large eps"))
    if full_acc is None or bpda_acc is None:
        out.append(_record("bpda_not_stronger", None, None, slack, "skipped"))
    else:
        s = slack if slack is not None else (2.0 / n ** 0.5 if n else 0.0)
        out.append(_record("bpda_not_stronger", bpda_acc >= full_acc - s, bpda_acc - full_acc, -s,
                           "BPDA accuracy minus full-gradient accuracy (must not be below -slack)"))
    if zero_grad_frac is None:
        out.append(_record("no_zero_gradients", None, None, 0.0, "skipped"))
    else:
        out.append(_record("no_zero_gradients", zero_grad_frac == 0.0, zero_grad_frac, 0.0,
                           "fraction of samples whose attack gradient is exactly zero"))
    return out
