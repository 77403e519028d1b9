"""One batch through the evaluation protocol: clean → attack ensemble → per-sample worst case → N fresh draws.

PLACEHOLDER until the evaluation protocol of issue 9 (`fastpurify/evaluation/protocol.py`) lands: this is built on
today's `fastpurify.attacks.pgd_eot` + `reevaluate` (PGD-EOT with the cross-entropy loss only, one run per attack
config).  The sweep calls nothing else, so the swap is `evaluate_batch` → the protocol's function.

Per EVALUATION.md rule 3 a sample counts as robust only if it survives every attack of the ensemble: each attack's
final images are scored on N *selection* draws, each sample's winner is the attack with the fewest correct
selection draws (then the lowest mean margin, then ensemble order), and the winner's images are re-evaluated on
N *fresh* draws, which give adv_preds / adv_correct.  Every draw's noise is a pure function of (seed, sample id,
purpose, draw), so a sample's outcome does not depend on the batch it is in.
"""

from __future__ import annotations

import torch

from ...attacks import PGDConfig, pgd_eot, reevaluate
from ...grad import GRAD_LABELS

PROTOCOL = ("sweep placeholder (pre-issue-9): PGD-EOT ensemble, per-sample worst case on N selection draws, "
            "reported on N fresh purifications (evaluate-after-optimizing)")


def run_seeds(seed: int, attack_names: list[str]) -> dict:
    """Separate run seeds for the clean draws, the attacks' EOT draws, selection and the fresh evaluation."""
    return {"run": seed, "clean": seed + 1, "select": seed + 2, "eval": seed + 3,
            "attacks": {name: seed + 10 + i for i, name in enumerate(attack_names)}}


def _margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y − max_{j≠y} z_j per row (> 0: correct)."""
    z = logits.double()
    true = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def _draws(defence, x, y, ids, n: int, run_seed: int) -> dict:
    """N purifications of x with fresh per-sample noise: preds/correct (B, N), mean margin (B,), and the first
    draw's purified images (for the report's grid)."""
    calls = []
    r = reevaluate(defence.forward(None, capture=calls), x, y, ids, n, run_seed=run_seed, batch=x.shape[0])
    margins = torch.stack([_margins(logits, y) for _, logits in calls], 1)  # one call per draw (batch = B)
    return {"preds": torch.tensor(r["preds"]).reshape(len(ids), n), "correct": torch.tensor(r["correct"]).reshape(
        len(ids), n), "margin": margins.mean(1), "purified": calls[0][0]}


def _perturbation(x_adv: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d = (x_adv - x).flatten(1).double()
    return d.abs().amax(1), d.norm(dim=1)


def evaluate_batch(defence, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, attacks, *, eps: float,
                   norm: str, n_reevals: int, seeds: dict) -> tuple[list[dict], dict]:
    """Per-sample outcome dicts (JSON-serialisable) and the batch's images {'adv', 'purified'} (winner's
    adversarial images and their first fresh purification)."""
    B, N = len(ids), n_reevals
    clean = _draws(defence, x, y, ids, N, seeds["clean"])
    per_attack = {}
    for a in attacks:
        cfg = PGDConfig(eps=eps, steps=a.steps, step_size=a.step_size or 0.0, eot=a.eot, norm=norm,
                        random_start=a.random_start, eot_chunk=a.eot_chunk or None)
        x_adv = pgd_eot(defence.forward(a.grad), x, y, ids, cfg, run_seed=seeds["attacks"][a.name])
        per_attack[a.name] = (x_adv, _draws(defence, x_adv, y, ids, N, seeds["select"]))
    names = [a.name for a in attacks]
    # Winner per sample: fewest correct selection draws, then lowest mean margin, then ensemble order.
    n_correct = torch.stack([per_attack[k][1]["correct"].sum(1) for k in names], 1).tolist()
    margin = torch.stack([per_attack[k][1]["margin"] for k in names], 1).tolist()
    winner = [min(range(len(names)), key=lambda k: (n_correct[b][k], margin[b][k], k)) for b in range(B)]
    x_win = torch.stack([per_attack[names[w]][0][b] for b, w in enumerate(winner)])
    fresh = _draws(defence, x_win, y, ids, N, seeds["eval"])
    linf, l2 = _perturbation(x_win, x)
    rows = []
    for b in range(B):
        per = {}
        for k in names:
            xa, sel = per_attack[k]
            li, l2a = _perturbation(xa[b:b + 1], x[b:b + 1])
            per[k] = {"preds": sel["preds"][b].tolist(), "correct": sel["correct"][b].tolist(),
                      "margin": round(float(sel["margin"][b]), 6), "linf": round(float(li), 6),
                      "l2": round(float(l2a), 6)}
        rows.append({
            "clean_preds": clean["preds"][b].tolist(), "clean_correct": clean["correct"][b].tolist(),
            "adv_preds": fresh["preds"][b].tolist(), "adv_correct": fresh["correct"][b].tolist(),
            "attacks": per, "winner": names[winner[b]], "margin": round(float(fresh["margin"][b]), 6),
            "clean_margin": round(float(clean["margin"][b]), 6), "linf": round(float(linf[b]), 6),
            "l2": round(float(l2[b]), 6), "nfe_defense": defence.nfe,
            "nfe_attack": sum(defence.nfe * a.steps * a.eot for a in attacks),
            "nfe_eval": defence.nfe * N * (2 + len(attacks)),
        })
    return rows, {"adv": x_win.detach(), "purified": fresh["purified"].detach()}


def attack_description(a) -> dict:
    """What a report says about one attack of the ensemble (CONVENTIONS.md §2.3)."""
    return {"name": a.name, "kind": "PGD-EOT", "loss": a.loss, "steps": a.steps, "step_size": a.step_size,
            "eot": a.eot, "random_start": a.random_start, "grad_mode": a.grad, "grad_label": GRAD_LABELS[a.grad]}
