"""Adapters: fastpurify models in our harness, in AutoAttack (`fra31/auto-attack`) and in torchattacks.

`PurifiedClassifier` is already what both libraries expect (an nn.Module returning (B, classes) logits on [0, 1]
inputs, device from its first parameter, fresh noise per call, nothing that depends on eval()/train()).  These
helpers run them the way METHODS.md §10.3 asks: AutoAttack `rand` (APGD-CE + APGD-DLR, EOT 20), then the final
images re-evaluated with N fresh purifications, the library's own (evaluate-while-optimizing) number kept apart.
Both libraries are optional extras, imported only here:
    pip install git+https://github.com/fra31/auto-attack      (RobustBench pins a392200)
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


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                   version: str = "rand", n_reevals: int = 10, bs: int = 64, seed: int = 0,
                   ids: torch.Tensor | None = None, log_path: str | None = None) -> dict:
    """AutoAttack on `model` (version 'rand' for randomized defences), then N-fold re-evaluation.

    Expected AutoAttack warnings on a purifier: check_randomized (the model is stochastic, as intended) and
    check_dynamic (guidance runs autograd inside the forward).  Returns a report dict with x_adv.
    """
    aa = _import("autoattack", "pip install git+https://github.com/fra31/auto-attack")
    adversary = aa.AutoAttack(model, norm=norm, eps=eps, version=version, seed=seed, device=x.device,
                              log_path=log_path)
    x_adv, y_internal = adversary.run_standard_evaluation(x, y, bs=bs, return_labels=True)
    ids = torch.arange(x.shape[0], device=x.device) if ids is None else ids
    r = reevaluate(as_forward(model), x_adv, y, ids, n_reevals, run_seed=seed)
    return {"attack": {"name": f"AutoAttack-{version}", "norm": norm, "eps": eps, "seed": seed},
            "protocol": PROTOCOL, "internal_robust_acc": float((y_internal == y).float().mean()),
            "internal_label": "AutoAttack-internal (evaluate-while-optimizing: one lucky draw breaks a sample)",
            "robust": r, **_describe(model), "x_adv": x_adv}


def run_torchattacks(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_reevals: int = 10,
                     seed: int = 0, ids: torch.Tensor | None = None) -> dict:
    """Run a torchattacks attack built on `model` (e.g. torchattacks.EOTPGD(model, eps, alpha, steps, eot_iter)),
    then N-fold re-evaluation of its final images."""
    _import("torchattacks", "pip install torchattacks")
    x_adv = attack(x, y)
    ids = torch.arange(x.shape[0], device=x.device) if ids is None else ids
    r = reevaluate(as_forward(model), x_adv, y, ids, n_reevals, run_seed=seed)
    return {"attack": {"name": type(attack).__name__, "repr": repr(attack)}, "protocol": PROTOCOL,
            "robust": r, **_describe(model), "x_adv": x_adv}
