"""Adapters: fastpurify models in our harness, in AutoAttack (`fra31/auto-attack`) and in torchattacks.

`PurifiedClassifier` is already what both libraries expect (an nn.Module returning (B, classes) logits on [0, 1]
inputs, device from its first parameter, fresh noise per call, nothing that depends on eval()/train()).  These
helpers run them the way docs/METHODS.md §10.3 asks: AutoAttack `rand` (APGD-CE + APGD-DLR, EOT 20), then the final
images re-evaluated with N fresh purifications, the library's own (evaluate-while-optimizing) number kept apart.
Both libraries are optional extras, imported only here (the dev requirements install both, and the tests run them):
    pip install pyautoattack  or  pip install git+https://github.com/fra31/auto-attack   (RobustBench pins a392200)
    pip install torchattacks                                    (3.5.1; its AutoAttack runs APGD 10 steps, not 100)
"""

from __future__ import annotations

import torch
from torch import nn

from .pgd import Forward, reevaluate

PROTOCOL = "evaluate-after-optimizing: final x_adv re-evaluated with N fresh purifications"


def as_forward(model: nn.Module) -> Forward:
    """forward(x, seeds) → logits for the harness: a PurifiedClassifier gets the per-sample seeds, any other
    classifier (deterministic) ignores them."""
    from ..api import PurifiedClassifier

    if isinstance(model, PurifiedClassifier):
        return lambda x, seeds: model(x, seed=seeds)
    return lambda x, seeds: model(x)


def _describe(model: nn.Module) -> dict:
    return model.describe() if hasattr(model, "describe") else {}


def _import(name: str, how: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"{name} is an optional extra and is not installed: {how}") from e


def autoattack_library(prefer: str | None = None):
    """(name, module) of the AutoAttack available: 'autoattack' (fra31's source tree, what RobustBench pins) or
    'pyautoattack' (the package on PyPI: imports as pyautoattack, `batch_size=` instead of `bs=`, no log_path)."""
    import importlib

    order = [prefer] if prefer else ["autoattack", "pyautoattack"]
    for name in order:
        if name not in ("autoattack", "pyautoattack"):
            raise ValueError(f"unknown AutoAttack library {name!r}; expected 'autoattack' or 'pyautoattack'")
        try:
            return name, importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError("AutoAttack is an optional extra and is not installed: pip install pyautoattack, or "
                      "pip install git+https://github.com/fra31/auto-attack")


RETURNS_STANDARD = ("run_standard_evaluation's images: the clean image for every sample the library did not break "
                    "on its own draws, and for every sample wrong on its single clean pass (never attacked)")
RETURNS_PER_SAMPLE = ("per sample, the APGD-CE or APGD-DLR iterate of highest loss (perturb(best_loss=True): every "
                      "sample attacked), the one with fewer correct selection draws (then lower margin)")


def _pick_per_sample(forward, cands: list, y, ids, n_select: int, seed: int) -> torch.Tensor:
    """Per sample, the candidate with the fewest correct selection draws, then the lowest mean margin."""
    best, key = None, None
    for c in cands:
        sel = reevaluate(forward, c, y, ids, n_select, run_seed=seed, selection=True)
        k = torch.tensor(sel["correct"], dtype=torch.float64).mean(1) * 1e6 + torch.tensor(sel["margin"]).double()
        better = torch.ones_like(k, dtype=torch.bool) if key is None else k < key
        best = c.clone() if best is None else torch.where(better.view(-1, *[1] * (c.dim() - 1)), c, best)
        key = k if key is None else torch.where(better, k, key)
    return best


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                   version: str = "rand", n_reevals: int = 10, bs: int = 64, seed: int = 0,
                   ids: torch.Tensor | None = None, log_path: str | None = None, n_iter: int | None = None,
                   eot_iter: int | None = None, library: str | None = None, candidates: str = "per_sample",
                   n_select: int = 5) -> dict:
    """AutoAttack's APGD on `model` (version 'rand' for randomized defences: APGD-CE + APGD-DLR, EOT 20), then
    N-fold re-evaluation.  n_iter / eot_iter override AutoAttack's budget (for tests and quick looks).
    library: 'autoattack' or 'pyautoattack' (default: whichever imports).

    candidates 'per_sample' (default): both APGD losses attack *every* sample and return their highest-loss
    iterate; per sample the weaker-for-the-defence candidate is chosen on n_select selection draws and reported
    on n_reevals fresh report draws.  'standard': the library's run_standard_evaluation, whose images are the
    clean image wherever the library did not break the sample on its own draws, and for samples wrong on its one
    clean pass (both fra31's and pyautoattack's behave so); the report counts those ('returned_clean').

    Expected AutoAttack warnings on a purifier: check_randomized and check_dynamic.  Returns a report dict with
    x_adv."""
    if candidates not in ("per_sample", "standard"):
        raise ValueError(f"candidates must be 'per_sample' or 'standard', got {candidates!r}")
    lib, aa = autoattack_library(library)
    kwargs = dict(norm=norm, eps=eps, version=version, seed=seed, device=x.device)
    adversary = aa.AutoAttack(model, log_path=log_path, **kwargs) if lib == "autoattack" else aa.AutoAttack(
        model, **kwargs)
    for attack in (adversary.apgd, adversary.apgd_targeted):
        if n_iter is not None:
            attack.n_iter = n_iter
        if eot_iter is not None:
            attack.eot_iter = eot_iter
    ids = torch.arange(x.shape[0], device=x.device) if ids is None else ids
    internal = None
    if candidates == "standard":
        if lib == "autoattack":
            x_adv, y_internal = adversary.run_standard_evaluation(x, y, bs=bs, return_labels=True)
        else:
            x_adv, y_internal = adversary.run_standard_evaluation(x, y, batch_size=bs)
        internal = float((y_internal == y).float().mean())
    else:
        cands = []
        for loss in ("ce", "dlr"):
            adversary.apgd.loss, adversary.apgd.seed = loss, seed
            cands.append(torch.cat([adversary.apgd.perturb(x[b:b + bs], y[b:b + bs], best_loss=True).detach()
                                    for b in range(0, x.shape[0], bs)]))
        x_adv = _pick_per_sample(as_forward(model), cands, y, ids, n_select, seed)
    r = reevaluate(as_forward(model), x_adv, y, ids, n_reevals, run_seed=seed)
    clean = (x_adv == x).flatten(1).all(1)
    return {"attack": {"name": f"AutoAttack-{version}", "library": lib, "norm": norm, "eps": eps, "seed": seed,
                       "n_iter": adversary.apgd.n_iter, "eot_iter": adversary.apgd.eot_iter, "candidates": candidates},
            "protocol": PROTOCOL, "returns": RETURNS_STANDARD if candidates == "standard" else RETURNS_PER_SAMPLE,
            "returned_clean": int(clean.sum()), "internal_robust_acc": internal,
            "internal_label": "AutoAttack-internal (evaluate-while-optimizing: one lucky draw breaks a sample)",
            "robust": r, **_describe(model), "x_adv": x_adv}


def run_torchattacks(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_reevals: int = 10,
                     seed: int = 0, ids: torch.Tensor | None = None) -> dict:
    """Run a torchattacks attack built on `model` (e.g. torchattacks.EOTPGD(model, eps, alpha, steps, eot_iter)),
    then N-fold re-evaluation of its final images."""
    _import("torchattacks", "pip install torchattacks")
    x_adv = attack(x, y).detach()
    ids = torch.arange(x.shape[0], device=x.device) if ids is None else ids
    r = reevaluate(as_forward(model), x_adv, y, ids, n_reevals, run_seed=seed)
    clean = (x_adv == x).flatten(1).all(1)
    return {"attack": {"name": type(attack).__name__, "repr": repr(attack)}, "protocol": PROTOCOL,
            "returns": "the attack's own output images, unchanged (torchattacks: PGD/EOTPGD the last iterate of "
                       "every sample; APGD the clean image where it found no success)",
            "returned_clean": int(clean.sum()), "robust": r, **_describe(model), "x_adv": x_adv}
