"""`audit(...)`: one user's defence through the protocol, with the black-box diagnostics and a verdict.

Steps: load SPEC; probe the modules (shape, range, finiteness, input left alone, randomness from torch's generators,
batch independence); gradient consistency across draws → the EOT budget; the attack ensemble of the protocol
(exact PGD / APGD-CE / APGD-DLR, a margin restart; BPDA and the classifier alone when the defence comes in two
parts) with its masking checks (zero gradients, float32 finite differences, nothing stronger than exact, paired
convergence with escalation, large ε → ~0 %, undefended → ~0 %); the float64 finite-difference check of the whole
pipeline with its randomness held fixed; the verdict.
"""

from __future__ import annotations

import platform
import time
from dataclasses import replace

import torch
from torch import nn

from ...attacks.adaptive import AttackSpec, Defence
from ..protocol import evaluate
from .blackbox import AuditError, BlackBoxPurifier, probe, probe_classifier
from .diagnostics import float64_gradient_check, gradient_consistency, unbounded_check
from .eps_curve import eps_curve
from .settings import AuditSettings
from .spec import Loaded, load
from .verdict import verdict


class _LogitsOf(nn.Module):
    """The 'classifier' of a one-module defence: its purifier already returns logits."""

    def forward(self, z):
        return z


def load_data(data: str, n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """'digits' (the embedded held-out split), 'cifar10:PATH' / 'cifar100:PATH' (test split, the first n images) or
    'imagenet:PATH' (an ImageFolder tree of synset folders, labels = ImageNet-1k class indices, Res256Crop224), read
    as sweeps read them.  ImageNet takes n ids drawn with the sweeps' seeded subset (data seed 0, sorted): its
    folder order is class-sorted, so the first n images would be one or two classes."""
    from ..sweep import data as sd
    from ..sweep.config import ConfigError, DataConfig

    kind, _, path = data.partition(":")
    try:
        if kind == "digits":
            ds = sd.DigitsData("test")
        elif kind in ("cifar10", "cifar100") and path:
            ds = (sd.cifar10 if kind == "cifar10" else sd.cifar100)(path, "test")
        elif kind == "imagenet" and path:
            ds = sd.ImageFolderData(path)
        else:
            raise AuditError(f"unknown --data {data!r}: expected 'digits', 'cifar10:PATH', 'cifar100:PATH' or "
                             "'imagenet:PATH'")
        if n < 3 or n > ds.size:
            raise AuditError(f"--n {n}: need 3 ≤ n ≤ {ds.size} images")
        ids = sd.select_ids(DataConfig(dataset=kind, n=n, subset="seeded" if kind == "imagenet" else "first"), ds)
        x, y = ds.images(ids), torch.as_tensor(ds.labels()[ids])
    except (ConfigError, OSError) as e:  # a missing or malformed data folder: one line, like a bad SPEC
        raise AuditError(f"--data {data}: {e}") from None
    name = "digits 16x16, embedded held-out test split" if kind == "digits" else f"{ds.name} ({ds.label_rule})"
    return x.contiguous(), y.contiguous(), name


def attack_list(defence: Defence, *, combined: bool, steps: int, eot: int) -> list[AttackSpec]:
    """The protocol's ensemble for a black box: what default_attacks gives a randomised purifier, less what needs
    our sampler (forward-only noise) and, for one module doing both, less BPDA and the classifier alone; plus PGD
    through the surrogate purifier the user names and PGD on the transfer source classifier they name (transfer
    attacks: the checks compare each with exact PGD, paired); for a
    randomised one with several draws per step, EM-EOT with the margin loss (an exact reference, as PGD/APGD)."""
    det = 1 if defence.purifier.randomized is False else eot
    attacks = [AttackSpec("pgd-ce", steps=steps, eot=det),
               AttackSpec("apgd-ce", kind="apgd", steps=steps, eot=det),
               AttackSpec("apgd-dlr", kind="apgd", loss="dlr", steps=steps, eot=det),
               AttackSpec("pgd-margin", loss="margin", steps=steps, eot=det, cascade=True)]
    if not combined:
        attacks += [AttackSpec("bpda", grad="bpda", steps=steps, eot=det),
                    AttackSpec("blind", kind="blind", steps=max(steps, 50), eot=1)]
    if "surrogate" in defence.variants:
        attacks.append(AttackSpec("pgd-surrogate", variant="surrogate", steps=steps, eot=eot))
    if defence.aux is not None:  # the source network the user names: its own adversarial images, transferred
        attacks += [AttackSpec("transfer-ce", kind="aux", steps=max(steps, 50), eot=1),
                    AttackSpec("transfer-margin", kind="aux", loss="margin", steps=max(steps, 50), eot=1)]
    if det > 1:  # randomised, several draws per step to weigh: the weakness they share (attacks/em_eot.py)
        attacks.append(AttackSpec("em-margin", kind="em", loss="margin", steps=steps, eot=eot))
    return attacks


def _surrogate(surrogate, x, batched: bool, found: dict) -> dict:
    """{'surrogate': wrapped} for a surrogate purifier (SPEC or module; a (classifier, purifier) pair gives its
    purifier), probed like the defence's."""
    if surrogate is None:
        return {}
    if isinstance(surrogate, str):
        got = load(surrogate)
        surrogate = got.purifier
    sp = BlackBoxPurifier(surrogate, batched=batched, name="surrogate")
    found["surrogate"] = probe(sp.eval(), x)
    return {"surrogate": sp}


def _transfer_source(source, x, classes: int, found: dict):
    """The classifier a transfer attack is computed on (SPEC or module; a (classifier, purifier) pair gives its
    classifier), probed like the defence's classifier; None when none is named."""
    if source is None:
        return None
    if isinstance(source, str):
        got = load(source)
        source = got.purifier if got.combined else got.classifier
    if not isinstance(source, nn.Module):
        raise AuditError(f"transfer source: expected an nn.Module or a SPEC, got {type(source).__name__}")
    found["transfer_source"] = probe_classifier(source.eval(), x, classes)
    return source


def _build(loaded: Loaded, name: str, x, classes: int, batched: bool, surrogate=None,
           transfer_from=None) -> tuple[Defence, dict]:
    pur = BlackBoxPurifier(loaded.purifier, logits=loaded.combined, batched=batched,
                           name="defence (one module)" if loaded.combined else "purifier")
    pur.eval()
    found = {"purifier": probe(pur, x)}
    if loaded.combined:
        classifier = _LogitsOf()
        found["purifier"]["classes"] = found["purifier"]["output_shape"][0]
    else:
        classifier = loaded.classifier.eval()
        found["classifier"] = probe_classifier(classifier, x, classes)
    if loaded.combined and surrogate is not None:
        raise AuditError("a surrogate purifier needs a defence given as (classifier, purifier): the surrogate's "
                         "images go to the classifier")
    return Defence(name, classifier, pur, variants=_surrogate(surrogate, x, batched, found),
                   aux=_transfer_source(transfer_from, x, classes, found)), found


def audit(spec: str | None = None, settings: AuditSettings | None = None, *, modules=None, name: str | None = None,
          surrogate=None, transfer_from=None, log=None, **overrides) -> dict:
    """Audit one defence; returns the report (JSON-ready but for '_x_adv', '_x', '_purifier': the chosen
    candidates, the images, the wrapped purifier).  spec: SPEC (see spec.py), or modules=(classifier, purifier) /
    one module.  settings: AuditSettings; keyword overrides replace its fields (an unknown one is a TypeError).
    surrogate: a purifier (SPEC or module) whose gradient a transfer attack follows.  transfer_from: a classifier
    (SPEC or module; e.g. a defence's own guidance network, or another model) whose adversarial images are
    transferred ('transfer-ce', 'transfer-margin'; checked not stronger than exact).  Raises AuditError on a bad
    SPEC, bad settings or a defence that fails."""
    try:
        s = replace(settings or AuditSettings(), **overrides)
    except ValueError as e:
        raise AuditError(str(e)) from None
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    if (spec is None) == (modules is None):
        raise AuditError("give a SPEC or modules=, not both")
    if modules is not None:
        loaded = (Loaded("<modules>", None, modules) if isinstance(modules, nn.Module)
                  else Loaded("<modules>", modules[0], modules[1]))
    else:
        loaded = load(spec)
    name = name or (spec.split(":")[0].rsplit("/", 1)[-1].removesuffix(".py") if spec else "defence")
    x, y, data_name = load_data(s.data, s.n)
    ids = torch.arange(len(y))
    classes = int(y.max()) + 1
    defence, found = _build(loaded, name, x, classes, s.batched, surrogate, transfer_from)
    pur = defence.purifier
    log(f"{name}: {'randomised' if pur.randomized else 'deterministic'}, "
        f"{'batch-independent' if pur.batch_independent else 'batch-DEPENDENT'}")

    checks, caveats = [], []
    k = s.large_eps_n
    if pur.randomized:
        consistency, c_check = gradient_consistency(defence, x[:k], y[:k], ids[:k], draws=s.consistency_draws,
                                                    max_eot=s.max_eot, seed=s.seed)
        checks.append(c_check)
        eot = consistency["eot_used"]
        log(f"{name}: gradient cosine across draws {consistency['mean_pairwise_cos']:.3f} → EOT {eot}")
    else:
        consistency, eot = {"skipped": "deterministic defence: every draw is the same, EOT 1"}, 1
    cfg = s.protocol(bool(pur.randomized), x.shape[1:])
    attacks = attack_list(defence, combined=loaded.combined, steps=s.steps, eot=eot)
    result = evaluate(defence, x, y, ids, attacks, cfg, log=log)
    curve = eps_curve(defence, x, y, ids, result, cfg, s.eps_curve, s.eps_curve_n, log)
    unbounded, u_check = unbounded_check(defence, x, y, ids, result["records"], cfg, eot=eot, log=log)
    checks = result["checks"] + checks + [u_check]
    fd64, fd_check = float64_gradient_check(defence, x, ids, n=s.fd_n, seed=s.seed)
    checks.append(fd_check)
    checks.append({"name": "batch_independent", "passed": pur.batch_independent, "value": pur.batch_independent,
                   "threshold": True, "category": "protocol", "reason": None if pur.batch_independent else
                   "a row's output depends on the other rows of its batch: audited one row at a time, which a "
                   "deployment in batches does not reproduce",
                   "detail": "row 0 of two batches sharing it, under one torch seed (deterministic: also alone)"})
    if not pur.batch_independent:
        caveats.append("batch-dependent defence, audited one image at a time")
    elif s.batched and pur.randomized:
        caveats.append("--batched: draws seeded per batch, so a sample's draws depend on its batch")
    if loaded.combined:
        caveats.append("one module doing both: BPDA and the classifier-alone attack are impossible, so the "
                       "transfer checks and 'undefended → ~0 %' did not run")
    x_adv = result.pop("x_adv")
    report = _report(spec or name, name, data_name, result, checks, caveats, found, consistency, fd64, cfg, eot,
                     s, attacks, t0)
    report["eps_curve"], report["unbounded"] = curve, unbounded
    # not JSON: the chosen candidates, the images and the wrapped purifier (report.write leaves '_' keys out)
    return {**report, "_x_adv": x_adv, "_x": x, "_purifier": pur}


def _report(spec, name, data_name, result, checks, caveats, found, consistency, fd64, cfg, eot, s, attacks, t0):
    from ..._version import __version__, code_fingerprint

    robust = result["ensemble"]
    return {
        "verdict": (said := verdict(checks, caveats, robust)), "reliable": said.startswith("reliable"),
        "defence": name, "spec": spec, "dataset": data_name, "n_examples": result["n_examples"],
        "threat_model": {"norm": cfg.norm, "eps": cfg.eps, "white_box": "autograd through the user's modules; "
                         "randomness from torch's generators, seeded per image and draw"},
        "clean_accuracy": result["clean"]["mean"], "clean": result["clean"],
        "robust_accuracy": robust["mean"], "robust": robust,
        "checks": checks, "caveats": caveats, "probe": found, "gradient_consistency": consistency,
        "gradient_check_f64": fd64, "eot": eot, "steps": s.steps, "settings": s.as_dict(), "attacks": [a.as_dict() for a in attacks],
        "protocol": result, "seeds": {"run_seed": cfg.seed, "keyed_by": "(run seed, sample id, stream, draw)"},
        "versions": {"fastpurify": __version__, "code": code_fingerprint(), "torch": torch.__version__,
                     "python": platform.python_version()},
        "seconds": round(time.perf_counter() - t0, 1), "torch_threads": torch.get_num_threads(),
    }
