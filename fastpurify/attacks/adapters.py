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


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                   version: str = "rand", n_reevals: int = 10, bs: int = 64, seed: int = 0,
                   ids: torch.Tensor | None = None, log_path: str | None = None, n_iter: int | None = None,
                   eot_iter: int | None = None, library: str | None = None) -> dict:
    """AutoAttack on `model` (version 'rand' for randomized defences: APGD-CE + APGD-DLR, EOT 20), then N-fold
    re-evaluation of its final images.  n_iter / eot_iter override AutoAttack's budget (for tests and quick looks;
    the reported protocol is the default).  library: 'autoattack' or 'pyautoattack' (default: whichever imports).

    Expected AutoAttack warnings on a purifier: check_randomized (the model is stochastic, as intended) and
    check_dynamic (guidance runs autograd inside the forward).  Returns a report dict with x_adv.
    """
    lib, aa = autoattack_library(library)
    kwargs = dict(norm=norm, eps=eps, version=version, seed=seed, device=x.device)
    adversary = aa.AutoAttack(model, log_path=log_path, **kwargs) if lib == "autoattack" else aa.AutoAttack(
        model, **kwargs)
    for attack in (adversary.apgd, adversary.apgd_targeted):
        if n_iter is not None:
            attack.n_iter = n_iter
        if eot_iter is not None:
            attack.eot_iter = eot_iter
    if lib == "autoattack":
        x_adv, y_internal = adversary.run_standard_evaluation(x, y, bs=bs, return_labels=True)
    else:
        x_adv, y_internal = adversary.run_standard_evaluation(x, y, batch_size=bs)
    ids = torch.arange(x.shape[0], device=x.device) if ids is None else ids
    r = reevaluate(as_forward(model), x_adv, y, ids, n_reevals, run_seed=seed)
    return {"attack": {"name": f"AutoAttack-{version}", "library": lib, "norm": norm, "eps": eps, "seed": seed,
                       "n_iter": adversary.apgd.n_iter, "eot_iter": adversary.apgd.eot_iter},
            "protocol": PROTOCOL, "internal_robust_acc": float((y_internal == y).float().mean()),
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
    return {"attack": {"name": type(attack).__name__, "repr": repr(attack)}, "protocol": PROTOCOL,
            "robust": r, **_describe(model), "x_adv": x_adv}
