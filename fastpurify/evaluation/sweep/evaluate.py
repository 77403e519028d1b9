"""One batch of a sweep through the evaluation protocol (`fastpurify.evaluation.protocol.evaluate`), turned into
per-sample records and one batch line.

The protocol's per-sample results (clean draws, each attack's report-draw predictions and selection accuracy /
margin, the per-sample winner and its report draws) do not depend on the batch; the batch-level statistics the
masking checks need (zero-gradient fractions, best-iterate curves, the undefended accuracy on the 'blind' images,
the finite-difference check of the exact gradient) go into a separate batch line, which the report aggregates weighted by the number of samples attacked.  The
protocol's large-ε check runs on those of the first `large_eps_n` images of the manifest (whichever batch and rank
they fall in) that the defence gets right on some clean draw: their records carry `large_eps_preds`, which the report
pools into the check.  Records carry each exact attack's half-steps predictions (`half_preds`, for the paired
convergence check).
"""

from __future__ import annotations

import dataclasses

import torch

from ...attacks import AttackSpec, Defence
from ..protocol import PROTOCOL, ProtocolConfig, evaluate, large_eps_attack

__all__ = ["PROTOCOL", "evaluate_batch", "protocol_config", "run_seeds"]


def protocol_config(cfg) -> ProtocolConfig:
    """The protocol settings of a SweepConfig (its PROTOCOL_KEYS are ProtocolConfig's own fields)."""
    return cfg.protocol()


def run_seeds(seed: int, specs: list[AttackSpec]) -> dict:
    """The seeds a record carries: the run seed (clean, selection and report draws are its streams) and each
    attack's own EOT seed."""
    return {"run": seed, "attacks": {s.name: s.seed_for(seed) for s in specs}}


def _norms(x_adv: torch.Tensor, x: torch.Tensor) -> tuple[list[float], list[float]]:
    d = (x_adv - x).flatten(1).double()
    return d.abs().amax(1).tolist(), d.norm(dim=1).tolist()


def evaluate_batch(defence: Defence, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, specs: list[AttackSpec],
                   pcfg: ProtocolConfig, large_ids: frozenset = frozenset()) -> tuple[list[dict], dict, torch.Tensor]:
    """(per-sample outcome dicts, the batch line, the chosen adversarial images).  Samples whose id is in
    large_ids also get the large-ε check (a randomised defence only, as in the protocol)."""
    res = evaluate(defence, x, y, ids, specs, dataclasses.replace(pcfg, large_eps=None))
    large = {}
    # the large-ε check counts samples the defence gets right on some clean draw (a wrong one proves nothing)
    sel = [b for b, i in enumerate(ids.tolist()) if i in large_ids
           and any(p == res["records"][b]["label"] for p in res["records"][b]["clean_preds"])]
    if sel and pcfg.large_eps and defence.randomized:
        idx = torch.tensor(sel, device=x.device)
        preds = large_eps_attack(defence, x[idx], y[idx], ids[idx], pcfg)["preds"]
        large = dict(zip(sel, preds))
    x_adv = res.pop("x_adv")
    linf, l2 = _norms(x_adv, x)
    nfe_attack = {r["attack"]: (r["stats"]["nfe_attack"] or 0) for r in res["attacks"] if "stats" in r}
    N, S = res["n_reevals"], res["n_select"]
    rows = []
    for b, rec in enumerate(res["records"]):
        label = rec["label"]
        attacks = {name: {**a, "correct": [int(p == label) for p in a["preds"]]} for name, a in rec["attacks"].items()}
        winner = rec["winner"]
        rows.append({
            "clean_preds": rec["clean_preds"], "clean_correct": rec["clean_correct"],
            "adv_preds": rec["adv_preds"], "adv_correct": rec["adv_correct"], "attacks": attacks, "winner": winner,
            "margin": None if winner == "clean" else attacks[winner]["sel_margin"],
            "linf": round(linf[b], 6), "l2": round(l2[b], 6), "nfe_defense": res["nfe_defense"],
            # forward NFE per image of the attacks that ran on this sample, and of the evaluation draws
            "nfe_attack": sum(nfe_attack.get(k, 0) for k in attacks),
            "nfe_eval": (res["nfe_defense"] or 0) * (N + S) * (1 + len(attacks)),
        })
        if b in large:
            rows[-1]["large_eps_preds"] = large[b]
    # the finite-difference check of the exact gradient, per batch (the report keeps the worst)
    fidelity = next((c for c in res.get("checks", []) if c["name"] == "gradient_matches_finite_differences"), None)
    batch = {"n": len(ids), "seconds": res["seconds"], "attacks": {}, "fidelity": fidelity}
    for r in res["attacks"]:
        st = r.get("stats")
        entry = {"n_attacked": r["n_attacked"], "skipped": r.get("skipped")}
        if st is not None:
            entry.update(zero_grad_elem_frac_max=st["zero_grad_elem_frac_max"], best_acc=st["best_acc"],
                         undefended_acc=r.get("undefended_acc"))
        batch["attacks"][r["attack"]] = entry
    return rows, batch, x_adv
