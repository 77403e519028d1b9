"""A user's black-box `nn.Module` as a purifier of the protocol: forward(x, seed=, grad=, trace=) → its output.

The module knows nothing of our seeds.  Its randomness comes from torch's generators, so every row is run on its
own, with torch's generator seeded from that row's per-sample seed (inside `torch.random.fork_rng`: the caller's
generator state is left as it was).  A row's output is then a function of (image, seed) alone — reproducible, and
independent of the batch it was evaluated in — whatever the module does with batches.  A module found deterministic
by the probe runs on whole batches (when it is also batch-independent).

Gradient modes: 'full' / 'autograd' / None = autograd through the module (the "exact" gradient: whatever the
module's own backward is — which the audit's finite-difference checks then test); 'bpda' = the module run without
gradients, backward the identity (only where the output is an image of the input's shape); 'none' = no gradient.
"""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import nn

SEED_MASK = (1 << 63) - 1  # torch.manual_seed takes a non-negative 64-bit seed


class AuditError(ValueError):
    """A problem with the audited defence or its SPEC: the message names it and how to fix it."""


def _finite_shape(out, x: torch.Tensor, what: str, image: bool) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise AuditError(f"{what} returned {type(out).__name__}, expected a tensor")
    if image and out.shape != x.shape:
        raise AuditError(f"{what} returned shape {tuple(out.shape)} for an input of shape {tuple(x.shape)}: a purifier "
                         "must return images of its input's shape")
    if not image and (out.dim() != 2 or out.shape[0] != x.shape[0]):
        raise AuditError(f"{what} returned shape {tuple(out.shape)} for {x.shape[0]} images: expected logits "
                         "(batch, classes)")
    if not torch.isfinite(out).all():
        bad = int((~torch.isfinite(out)).sum())
        raise AuditError(f"{what} returned {bad} non-finite values (NaN or inf) on input range "
                         f"[{float(x.min()):.3g}, {float(x.max()):.3g}]: fix the module (e.g. clamp, eps in "
                         "divisions) before auditing it")
    return out


class BlackBoxPurifier(nn.Module):
    """`module` (x → images, or x → logits when `logits` is True: one module doing both) under the protocol's
    purifier interface.  randomized / batch_independent: set by `probe` (None until then)."""

    def __init__(self, module: nn.Module, *, logits: bool = False, name: str = "purifier", batched: bool = False):
        super().__init__()
        self.module, self.logits, self.label, self.batched = module, logits, name, batched
        self.randomized: bool | None = None
        self.batch_independent: bool | None = None
        self.nfe = None  # unknown for a black box: the protocol then reports no NFE

    # -- calls -------------------------------------------------------------------------------------------------
    def _checked(self, x):
        return _finite_shape(self.module(x), x, self.label, image=not self.logits)

    def _row(self, x_row: torch.Tensor, seed: int) -> torch.Tensor:
        devices = [x_row.device.index or 0] if x_row.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(seed) & SEED_MASK)
            return self._checked(x_row)

    def _run(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        if self.randomized is False and self.batch_independent:
            return self._checked(x)
        if self.batched and self.batch_independent:
            # opt-in speed: one call per batch, seeded by a hash of all its rows' seeds — reproducible for the same
            # call, but a row's draw then depends on the batch it is in (report.json says so)
            digest = hashlib.blake2b(seeds.numpy().tobytes(), digest_size=8).digest()
            return self._row(x, int.from_bytes(digest, "little"))
        return torch.cat([self._row(x[b:b + 1], seeds[b]) for b in range(x.shape[0])])

    def forward(self, x, seed=None, *, round: int = 0, grad: str | None = None, trace: list | None = None):
        if seed is None:  # fresh draws from torch's generator, as the module would have made them
            seeds = torch.randint(0, 2**62, (x.shape[0],))
        else:
            seeds = torch.as_tensor(seed, dtype=torch.int64).reshape(-1).expand(x.shape[0]).cpu()
        if grad == "bpda":
            if self.logits:
                raise AuditError("BPDA needs a purifier returning images; this defence is one module (x → logits)")
            with torch.no_grad():
                out = self._run(x.detach(), seeds)
            return x + (out - x).detach()
        if grad == "none":
            with torch.no_grad():
                return self._run(x.detach(), seeds)
        return self._run(x, seeds)

    def describe(self) -> dict:
        return {"black_box": type(self.module).__name__, "returns": "logits" if self.logits else "images",
                "randomized": self.randomized, "batch_independent": self.batch_independent,
                "randomness": "torch's generators, seeded per row from the per-sample seed",
                "calls": self.calls}

    @property
    def calls(self) -> str:
        if self.randomized is False and self.batch_independent:
            return "whole batches (deterministic)"
        if self.batched and self.batch_independent:
            return "whole batches, seeded per call (--batched: a draw depends on the batch)"
        return "one row at a time, seeded per row"

    def float64(self) -> BlackBoxPurifier:
        """A float64 copy (for the finite-difference check); raises AuditError if the module cannot be converted."""
        twin = BlackBoxPurifier(copy.deepcopy(self.module).double(), logits=self.logits, name=self.label,
                                batched=self.batched)
        twin.randomized, twin.batch_independent = self.randomized, self.batch_independent
        return twin.eval()


def _same(a: torch.Tensor, b: torch.Tensor, tol: float) -> bool:
    return bool((a - b).abs().max() <= tol * max(1.0, float(b.abs().max())))


@torch.no_grad()
def probe(p: BlackBoxPurifier, x: torch.Tensor, *, tol: float = 1e-5) -> dict:
    """Before any attack, on a few images: output shape and finiteness, its range (reported: the user's classifier
    takes what the user's purifier gives, [0, 1] or not), that the input
    is not modified, that one seed gives one output (randomness from torch's generators only), whether the output
    changes with the seed (randomized), and whether a row's output depends on the other rows of its batch.
    Sets p.randomized and p.batch_independent; returns what it found."""
    x = x[:3].clone()
    if x.shape[0] < 3:
        raise AuditError("the probe needs at least 3 images (--n 3 or more)")
    before = x.clone()
    seed = 12345
    a = p._row(x[:1], seed)
    if not torch.equal(x, before):
        raise AuditError(f"{p.label} modified its input in place (max change {float((x - before).abs().max()):.3g}): "
                         "a defence must not write into the caller's tensor (use out-of-place ops, or clone x first)")
    b = p._row(x[:1], seed)
    if not torch.equal(a, b):
        raise AuditError(f"{p.label}: two calls with torch's generator seeded alike differ (max "
                         f"{float((a - b).abs().max()):.3g}): its randomness does not come from torch's generators "
                         "(numpy, python's random, time?); draw noise with torch (torch.randn, torch.rand) so that "
                         "results can be reproduced")
    others = [p._row(x[:1], seed + k) for k in (1, 2, 3)]
    p.randomized = any(not torch.equal(a, o) for o in others)
    # the same seed for the whole batch: does row 0 change when the other rows do?
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        r1 = p._checked(x[[0, 1]])
        torch.manual_seed(seed)
        r2 = p._checked(x[[0, 2]])
    p.batch_independent = _same(r1[:1], r2[:1], tol)
    if not p.randomized:  # deterministic: a row alone must equal the row in a batch
        p.batch_independent &= _same(r1[:1], a, tol)
    return {"randomized": p.randomized, "batch_independent": p.batch_independent, "output_shape": list(a.shape[1:]),
            "output_range": [round(float(a.min()), 6), round(float(a.max()), 6)],
            "output_in_unit_range": p.logits or bool(float(a.min()) >= -tol and float(a.max()) <= 1 + tol),
            "mutates_input": False,
            "reproducible_under_torch_seed": True}


@torch.no_grad()
def probe_classifier(classifier: nn.Module, x: torch.Tensor, classes: int) -> dict:
    """The classifier alone: logits (B, ≥ classes), finite, deterministic, input left alone."""
    x = x[:3].clone()
    before = x.clone()
    a = _finite_shape(classifier(x), x, "classifier", image=False)
    if not torch.equal(x, before):
        raise AuditError("classifier modified its input in place: a defence must not write into the caller's tensor")
    if a.shape[1] < classes:
        raise AuditError(f"classifier returned {a.shape[1]} logits; the data has {classes} classes")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        b = classifier(x)
        torch.manual_seed(2)
        c = classifier(x)
    if not (_same(a, b, 1e-5) and _same(a, c, 1e-5)):
        raise AuditError("classifier is randomised (its outputs differ between calls): return one module doing "
                         "purification and classification, so that its randomness is seeded with the purifier's")
    return {"classes": int(a.shape[1])}
