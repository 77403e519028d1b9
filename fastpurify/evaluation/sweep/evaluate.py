"""One batch through the evaluation protocol: clean → attack ensemble → per-sample worst case → N fresh draws.

PLACEHOLDER until the evaluation protocol of issue 9 (`fastpurify/evaluation/protocol.py`) lands: this is built on
today's `fastpurify.attacks.pgd_eot` (CE / margin / DLR loss, best iterate) + `reevaluate`, one run per attack
config.  The sweep calls nothing else, so the swap is `evaluate_batch` → the protocol's function.

Per EVALUATION.md rule 3 a sample counts as robust only if it survives every attack of the ensemble: each attack's
images are scored on N *selection* draws (`reevaluate(selection=True)`), each sample's winner is the attack with
the fewest correct selection draws (then the lowest mean margin, then ensemble order), and the winner's images are
re-evaluated on N *fresh* draws, which give adv_preds / adv_correct.  Every draw's noise is a pure function of
(seed, sample id, purpose, draw), so a sample's outcome does not depend on the batch it is in.
"""

from __future__ import annotations

import torch

from ...attacks import PGDConfig, pgd_eot, reevaluate

PROTOCOL = ("sweep placeholder (pre-issue-9): PGD-EOT ensemble, per-sample worst case on N selection draws, "
            "reported on N fresh purifications (evaluate-after-optimizing)")


def run_seeds(seed: int, attack_names: list[str]) -> dict:
    """Run seeds of the clean draws, of each attack's EOT draws, and of the selection + fresh evaluation draws
    (two streams of one seed)."""
    return {"run": seed, "clean": seed + 1, "eval": seed + 2,
            "attacks": {name: seed + 10 + i for i, name in enumerate(attack_names)}}


def _draws(defence, x, y, ids, n: int, run_seed: int, selection: bool = False) -> dict:
    """N purifications of x with fresh per-sample noise: preds / correct (B, N), mean margin (B,), and the first
    draw's purified images (for the report's grid)."""
    calls = []
    r = reevaluate(defence.forward(None, capture=calls), x, y, ids, n, run_seed=run_seed, batch=x.shape[0],
                   selection=selection)
    return {"preds": r["preds"], "correct": r["correct"], "margin": r["margin"], "purified": calls[0][0]}


def _attack_curve(calls: list, y: torch.Tensor, steps: int, eot: int) -> list[list[float]] | None:
    """Per sample, the EOT accuracy of the iterate at every PGD step (the final iterate last), read off the logits
    of the attack's own forward calls: pgd_eot evaluates step k on rows r·B + b (draw r, sample b), chunk after
    chunk in order.  None when the call pattern is not that one (then no curve is recorded)."""
    B = y.shape[0]
    if not calls:
        return None
    logits = torch.cat([lg for _, lg in calls])
    if logits.shape[0] % (eot * B) or logits.shape[0] // (eot * B) not in (steps, steps + 1):
        return None
    correct = (logits.argmax(1) == y.repeat(logits.shape[0] // B)).double().view(-1, eot, B).mean(1)  # (K, B)
    return [[round(v, 4) for v in correct[:, b].tolist()] for b in range(B)]


def _perturbation(x_adv: torch.Tensor, x: torch.Tensor) -> tuple[list[float], list[float]]:
    d = (x_adv - x).flatten(1).double()
    return d.abs().amax(1).tolist(), d.norm(dim=1).tolist()


def evaluate_batch(defence, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, attacks, *, eps: float,
                   norm: str, n_reevals: int, seeds: dict) -> tuple[list[dict], dict]:
    """Per-sample outcome dicts (JSON-serialisable) and the batch's images {'adv', 'purified'} (the winners'
    adversarial images and their first fresh purification)."""
    B, N = len(ids), n_reevals
    clean = _draws(defence, x, y, ids, N, seeds["clean"])
    per_attack = {}
    for a in attacks:
        cfg = PGDConfig(eps=eps, steps=a.steps, step_size=a.step_size or 0.0, eot=a.eot, norm=norm,
                        random_start=a.random_start, eot_chunk=a.eot_chunk or None, loss=a.loss,
                        best_iterate=a.best_iterate)
        calls = []
        x_adv = pgd_eot(defence.forward(a.grad, capture=calls), x, y, ids, cfg, run_seed=seeds["attacks"][a.name])
        curve = _attack_curve(calls, y, a.steps, a.eot)
        per_attack[a.name] = (x_adv, _draws(defence, x_adv, y, ids, N, seeds["eval"], selection=True), curve)
    names = [a.name for a in attacks]
    # Winner per sample: fewest correct selection draws, then lowest mean margin, then ensemble order.
    winner = [min(range(len(names)), key=lambda k: (sum(per_attack[names[k]][1]["correct"][b]),
                                                    per_attack[names[k]][1]["margin"][b], k)) for b in range(B)]
    x_win = torch.stack([per_attack[names[w]][0][b] for b, w in enumerate(winner)])
    fresh = _draws(defence, x_win, y, ids, N, seeds["eval"])
    norms = {k: _perturbation(per_attack[k][0], x) for k in names}
    rows = []
    for b in range(B):
        per = {}
        for k in names:
            _, sel, curve = per_attack[k]
            per[k] = {"preds": sel["preds"][b], "correct": sel["correct"][b], "margin": round(sel["margin"][b], 6),
                      "linf": round(norms[k][0][b], 6), "l2": round(norms[k][1][b], 6),
                      "curve": None if curve is None else curve[b]}
        w = names[winner[b]]
        rows.append({
            "clean_preds": clean["preds"][b], "clean_correct": clean["correct"][b],
            "adv_preds": fresh["preds"][b], "adv_correct": fresh["correct"][b],
            "attacks": per, "winner": w, "margin": round(fresh["margin"][b], 6),
            "clean_margin": round(clean["margin"][b], 6), "linf": per[w]["linf"], "l2": per[w]["l2"],
            "nfe_defense": defence.nfe,
            "nfe_attack": sum(defence.nfe * a.eot * (a.steps + int(a.best_iterate)) for a in attacks),
            "nfe_eval": defence.nfe * N * (2 + len(attacks)),
        })
    return rows, {"adv": x_win.detach(), "purified": fresh["purified"].detach()}

