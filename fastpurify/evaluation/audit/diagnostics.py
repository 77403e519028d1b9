"""The audit's own checks, beside the protocol's (checks.py): gradient consistency across draws with the EOT budget
it calls for, and the float64 finite-difference check of the whole pipeline with the randomness held fixed.
Each is a record of the protocol's shape {name, passed, value, threshold, detail, category, reason}; every
threshold is derived where it is defined, from a stated principle, never fitted to the reference defences."""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F

from ...attacks.adaptive import AttackSpec, run_attack
from ...attacks.pgd import attack_seeds, fixed_noise_seeds, reevaluate
from ...ops import streams
from ..gradcheck import finite_difference_check

# Gradient consistency.  Model: one draw's gradient g = μ + ε (μ the expected gradient, ε zero-mean noise).  Two
# independent draws then have cosine ρ ≈ |μ|² / (|μ|² + E|ε|²), and the mean of m draws has cosine
# √(mρ / (mρ + 1 − ρ)) with μ.  Principle: the EOT estimate an attack steps along must keep at least 90 % of the
# first-order gain of a step along μ itself, i.e. cosine ≥ 0.9: m ≥ (0.9² / (1 − 0.9²)) · (1 − ρ) / ρ.
TARGET_COS = 0.9
_K = TARGET_COS ** 2 / (1 - TARGET_COS ** 2)  # m ≥ _K·(1 − ρ)/ρ  ⇔  ρ ≥ _K / (m + _K)
# Gradient correctness in float64: central differences at the best h agree with a right gradient to ~1e-8
# (truncation ~h², rounding ~1e-16/h); 1e-5 is three orders above that and far below any dropped term.
FD64_THRESHOLD = 1e-5


def _check(name, passed, value, threshold, detail, category="masking", reason=None) -> dict:
    return {"name": name, "passed": passed, "value": value, "threshold": threshold, "detail": detail,
            "category": category, "reason": reason if passed is False else None}


def eot_needed(rho: float, target: float = TARGET_COS) -> float:
    """Draws whose mean has expected cosine ≥ target with the expected gradient, from the pairwise cosine ρ of
    single draws (inf when ρ ≤ 0: the draws share no direction)."""
    if rho >= 1.0:
        return 1
    if rho <= 0.0:
        return math.inf
    k = target ** 2 / (1 - target ** 2)
    return max(1, math.ceil(k * (1 - rho) / rho - 1e-9))


def _draw_gradients(defence, x, y, ids, draws: int, run_seed: int) -> torch.Tensor:
    """(draws, B, D) input gradients of CE(f(P(x))) per sample, one fresh draw each (exact gradient)."""
    out = []
    for k in range(draws):
        seeds = attack_seeds(run_seed, ids, streams.ATTACK, k)
        xr = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(defence.logits(xr, seeds, grad="full"), y, reduction="sum")
            (g,) = torch.autograd.grad(loss, xr)
        out.append(g.flatten(1).double())
    return torch.stack(out)


def _pair_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample cosine of two (B, D) gradients; a zero gradient shares no direction (cosine 0)."""
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, (a * b).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))


def gradient_consistency(defence, x, y, ids, *, draws: int, max_eot: int, seed: int) -> tuple[dict, dict]:
    """Cosine similarity of independent single-draw gradients (every pair of `draws` draws, per sample), the EOT
    budget it calls for (from the lower end of a bootstrap 95 % interval of the mean pairwise cosine, so the budget
    is not set by a lucky estimate), and the measured curve: the cosine of two disjoint means of m draws
    (≈ mρ / (mρ + 1 − ρ)) for m = 1, 2, 4, … ≤ draws / 2.  Returns (result, check)."""
    run_seed = seed + zlib.crc32(b"audit-gradient-consistency")
    G = _draw_gradients(defence, x, y, ids, draws, run_seed)
    pairs = [(i, j) for i in range(draws) for j in range(i + 1, draws)]
    per_sample = torch.stack([_pair_cos(G[i], G[j]) for i, j in pairs]).mean(0)  # (B,)
    gen = torch.Generator().manual_seed(seed)
    boot = per_sample[torch.randint(0, len(per_sample), (4000, len(per_sample)), generator=gen)].mean(1).sort().values
    rho, lo = float(per_sample.mean()), float(boot[int(0.025 * 3999)])
    curve, m = {}, 1
    while 2 * m <= draws:
        curve[m] = round(float(_pair_cos(G[:m].mean(0), G[m:2 * m].mean(0)).mean()), 4)
        m *= 2
    need = eot_needed(lo)
    eot = int(min(need, max_eot))
    result = {"draws": draws, "samples": len(x), "mean_pairwise_cos": round(rho, 4), "cos_ci95_low": round(lo, 4),
              "per_sample_cos": [round(float(c), 4) for c in per_sample], "eot_needed": need if need != math.inf
              else None, "eot_used": eot, "max_eot": max_eot, "target_cos": TARGET_COS, "curve_measured": curve,
              "curve_model": {mm: round(mm * lo / (mm * lo + 1 - lo), 4) if lo > 0 else 0.0
                              for mm in (1, 2, 4, 8, 16, 32, 64)}}
    ok = need <= max_eot
    check = _check("gradient_consistent_across_draws", ok, round(lo, 4),
                   round(_K / (max_eot + _K), 4),
                   f"lower 95 % end of the mean pairwise cosine of single-draw gradients ({draws} draws × {len(x)} "
                   f"samples; mean {rho:.3f}); EOT {need} draws needed for cosine ≥ {TARGET_COS} with the expected "
                   f"gradient, budget {max_eot}; ok when the budget suffices (threshold: the cosine at which it "
                   "just does)", "noise",
                   f"gradient too noisy: {need} EOT draws per step needed, more than the budget {max_eot} (rerun "
                   "with a larger --max-eot); the attacks step along noise")
    return result, check


def float64_gradient_check(defence, x, ids, *, n: int, seed: int) -> tuple[dict, dict]:
    """finite_difference_check (gradcheck.py) of x → logits of the whole pipeline in float64, every draw fixed
    (per-sample fixed-noise seeds), at a generic interior point 0.05 + 0.9·x + 0.01·u (pixels off the [0, 1]
    boundary and off exact ties, where no derivative exists)."""
    k = min(n, len(x))
    gen = torch.Generator().manual_seed(seed)
    point = (0.05 + 0.9 * x[:k].double() + 0.01 * torch.rand(x[:k].shape, generator=gen, dtype=torch.float64))
    seeds = fixed_noise_seeds(seed, ids[:k])
    name = "gradient_matches_finite_differences_f64"
    try:
        pur = defence.purifier.float64()
        clf = None if defence.purifier.logits else _double(defence.classifier)

        def fn(v):
            out = pur(v, seed=seeds, grad="full")
            return out if clf is None else clf(out)

        r = finite_difference_check(fn, point, seed=seed, threshold=FD64_THRESHOLD)
    # any failure of the user's module in float64 (dtype mismatches inside it) is recorded as 'not run', with why
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}, _check(
            name, None, None, FD64_THRESHOLD, f"not run: the pipeline does not run in float64 ({type(e).__name__}: "
            f"{e}); the protocol's float32 finite-difference check stands alone")
    d = r.details
    passed = bool(r.ok) if d["stable"] and d["differentiable"] else False
    reason = ("the 'exact' gradient is not the pipeline's derivative (straight-through, detached or approximate "
              "terms)" if d["stable"] and d["differentiable"] else
              "not smooth at small scales (rounding or a discontinuity): no gradient is the derivative here")
    return ({k2: d[k2] for k2 in ("value", "fd_spread", "asymmetry", "no_grad_path", "stable", "differentiable",
                                  "verdict", "errors", "grad_norm")},
            _check(name, passed, r.value, FD64_THRESHOLD, f"{d['verdict']}; {k} samples, {d['directions']} "
                   f"directions, h {d['hs']}, one fixed draw, float64", reason=reason))


def _double(m):
    import copy

    return copy.deepcopy(m).double().eval()


def unbounded_eps(norm: str, shape) -> float:
    """A radius that reaches every image of the [0, 1] box from any point of it: ℓ∞ 1, ℓ2 the box's diameter √d."""
    return 1.0 if norm == "linf" else math.sqrt(math.prod(shape))


def unbounded_check(defence, x, y, ids, records: list[dict], cfg, *, eot: int, log=None) -> tuple[dict | None, dict]:
    """An exact-gradient CE attack that may choose *any* image (the radius covers the whole box), on the first
    cfg.large_eps_n samples the defence gets right on some clean report draw, for deterministic and randomised
    defences alike.  Principle: an attacker free to pick any image can show the classifier an image of another
    class, which every defence that keeps the classifier's accuracy on real images must then misclassify; an
    attack that cannot get there is not following a useful gradient (masking).  Threshold: the protocol's ~0 %
    (cfg.near_zero), on min(N, 2) fresh report draws."""
    name = "unbounded_attack_near_zero"
    ok = [i for i, r in enumerate(records) if any(r["clean_correct"])][:cfg.large_eps_n]
    if not ok:
        return None, _check(name, None, None, cfg.near_zero, "not run: no sample is classified right clean")
    eps = unbounded_eps(cfg.norm, x.shape[1:])
    spec = AttackSpec("unbounded-ce", steps=cfg.large_eps_steps, eot=eot if defence.randomized else 1,
                      random_start=False)
    sel = torch.tensor(ok)
    if log:
        log(f"{defence.name}: unbounded check (eps {eps:g}, {cfg.norm}) on {len(ok)} samples")
    x_adv, st = run_attack(defence, spec, x[sel], y[sel], ids[sel], eps=eps, norm=cfg.norm, run_seed=cfg.seed)
    rep = reevaluate(defence.forward_fn(), x_adv, y[sel], ids[sel], min(cfg.n_reevals, 2) if defence.randomized
                     else 1, run_seed=cfg.seed)
    result = {"eps": eps, "norm": cfg.norm, "n_examples": len(ok), "attack": spec.as_dict(), "mean": rep["mean"],
              "worst": rep["worst"], "seconds": st["seconds"],
              "selected": "clean-correct (right on at least one clean report draw)"}
    return result, _check(name, rep["mean"] <= cfg.near_zero, rep["mean"], cfg.near_zero,
                          f"plain CE attack, exact gradients, {spec.steps} steps, EOT {spec.eot}, eps {eps:g} "
                          f"({cfg.norm}: every image of the box reachable) on {len(ok)} clean-correct samples",
                          reason="an attack free to choose any image does not break the defence: its gradient "
                                 "leads nowhere (masking)")
