"""Gradient modes for adaptive attacks: one switch, `Purifier(..., grad=MODE)` / `purify(..., grad=MODE)` (docs/METHODS.md §9).

| mode        | backward computes                                            | memory in sampler steps          |
|-------------|--------------------------------------------------------------|----------------------------------|
| 'full'      | the exact VJP of the unrolled sampler, guidance included;    | one state x_t per step + one     |
|             | each step (UNet, guidance, fused op) is recomputed in the    | step's activations               |
|             | backward pass from its stored input, noise replayed (Philox) |                                  |
| 'autograd'  | the same VJP by plain autograd, nothing recomputed (the      | every step's activations         |
|             | reference the other modes are tested against)                |                                  |
| 'adjoint'   | VP-SDE only: the continuous adjoint, states reconstructed in | O(1)                             |
|             | reverse time with the replayed Brownian increments           |                                  |
| 'surrogate' | value from the defence, exact gradient of a cheaper purifier | as 'full', for the surrogate     |
| 'bpda'      | identity: ∂x_pur/∂x := I (a weaker attack)                   | none                             |
| 'none'      | nothing: the output is detached (defence-only runs)          | none                             |

Fixed noise (deterministic white-box) is not a mode but a seed: `Purifier(fixed_noise_seed=...)`,
`PurifiedClassifier(seed=...)`, or explicit per-sample seeds; every mode replays the same noise for the same seeds.
Model weights are frozen in every mode: gradients flow to the input only.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

GRAD_MODES = ("full", "autograd", "adjoint", "surrogate", "bpda", "none")
GRAD_LABELS = {
    "full": "full (exact backprop through every step, per-step recompute)",
    "autograd": "autograd (exact backprop, plain unrolled graph)",
    "adjoint": "adjoint (DiffPure-compatible)",
    "surrogate": "surrogate (value from the defence, exact gradient of the surrogate purifier)",
    "bpda": "bpda (identity backward; a weaker attack than exact gradients)",
    "none": "none (no gradient)",
}


def check_mode(mode: str) -> str:
    if mode not in GRAD_MODES:
        raise ValueError(f"unknown grad mode {mode!r}; expected one of {', '.join(GRAD_MODES)}")
    return mode


# ---------------------------------------------------------------------------------------------- full: per-step recompute
class _RecomputedStep(torch.autograd.Function):
    """out = body(u), storing only u.  Backward re-runs body(u) with a graph, then takes its VJP.

    `context` is the tensor guidance was bound to (x_in) and `leaf` a detached leaf copy the hook actually closes
    over, so guidance terms that depend on x_in (targets, features) get their gradient without torch ever having
    to see through the closure: the VJP w.r.t. `leaf` is returned as the gradient of `context`.
    """

    @staticmethod
    def forward(ctx, body, u, context, leaf):
        ctx.body, ctx.leaf = body, leaf
        ctx.save_for_backward(u)
        # torch's RNG state, for a network that draws from it (see replay_state); None while a CUDA graph captures.
        ctx.rng = replay_state(u.device)
        # Forward runs without a graph (autograd.Function forward is no-grad); guidance hooks still take their own
        # local autograd.grad inside, which is why torch's non-reentrant checkpoint cannot be used here.
        return body(u)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        want_ctx = ctx.leaf is not None and ctx.needs_input_grad[2]
        with torch.enable_grad(), _replaying(u.device, ctx.rng):
            uu = u.detach().requires_grad_(True)
            out = ctx.body(uu)
            inputs = (uu, ctx.leaf) if want_ctx else (uu,)
            # retain_graph: the leaf's own graph (e.g. φ features of x_in) is shared by every step's recompute.
            grads = torch.autograd.grad(out, inputs, grad, retain_graph=want_ctx, allow_unused=True)
        gu = grads[0] if grads[0] is not None else torch.zeros_like(u)
        return None, gu, grads[1] if want_ctx else None, None


# ---- torch's RNG state around the recompute
# Decision: the state is saved and replayed in eager runs only, never while a CUDA graph captures.
#   - Our own noise needs none of it: every draw is Philox of (seed, step, purpose, round) with the seeds in a tensor,
#     so the recompute regenerates the same noise from its inputs alone.
#   - It matters only for a network that draws from torch's generator itself: dropout in train mode (which a
#     Purifier never allows: InferenceModule keeps every network in eval mode) or a layer that samples in eval mode.
#     Eager runs keep the replay for those (as torch.utils.checkpoint does): cheap (host-side state, no sync) and exact.
#   - During capture PyTorch forbids reading or setting the CUDA generator ("Cannot call
#     CUDAGeneratorImpl::current_seed during CUDA graph capture"), and a replay could not help anyway: a captured
#     graph advances CUDA's Philox offset on every replay, so forward and recompute would draw different numbers.
#     So nothing is saved while capturing, and a network that draws from torch's RNG is refused before capture
#     instead (samplers.graphed.StaticRun compares the generators' states around its eager warm-up runs and raises,
#     or graphs='auto' falls back to eager).
def capturing(device: torch.device) -> bool:
    """True while the current CUDA stream of `device` is being captured into a CUDA graph."""
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def replay_state(device: torch.device):
    """torch's RNG state (CPU, and the device's generator on CUDA) for the recompute to replay; None while capturing
    (nothing to replay: see the decision above)."""
    if capturing(device):
        return None
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


@contextmanager
def _replaying(device: torch.device, state):
    """Run the recompute with the generators set to `state` and put them back afterwards; nothing when state is None
    (saved during capture)."""
    if state is None:
        yield
        return
    with torch.random.fork_rng(devices=[device] if state[1] is not None else []):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


class StepCheckpoint:
    """Callable `(body, u) → body(u)` for the samplers' `checkpoint=` argument: 'full' mode's per-step recompute.

    context: the tensor the guidance hook is bound to (x_in), or None.  Bind the hook to `.leaf`, not to context.
    keep_bytes: activations the forward pass may keep instead of recomputing (no guidance only).  While the bytes
    kept so far plus the last kept step's size fit, a step runs with its autograd graph (its backward skips the
    recompute: one network forward fewer); the rest are recomputed.  The gradient is the same either way (the same
    kernels on the same values); memory grows by at most keep_bytes (the first kept step is measured, so it alone
    may exceed a budget smaller than one step).
    """

    def __init__(self, context: torch.Tensor | None = None, keep_bytes: int = 0, shared=()):
        self.context = context
        self.shared = {t.untyped_storage().data_ptr() for t in shared}  # weights: saved by every step, kept anyway
        self.leaf = None if context is None else context.detach().requires_grad_(context.requires_grad)
        self.keep_bytes = keep_bytes if context is None else 0  # a kept graph would end at the leaf, not at x_in
        self.kept_bytes, self.kept_steps, self._step_bytes = 0, 0, 0

    def __call__(self, body: Callable[[torch.Tensor], torch.Tensor], u: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return body(u)
        if self.keep_bytes > 0 and self.kept_bytes + self._step_bytes <= self.keep_bytes:
            out, n = saved_bytes(lambda: body(u), exclude=self.shared)
            self._step_bytes = max(self._step_bytes, n)
            self.kept_bytes += n
            self.kept_steps += 1
            return out
        return _RecomputedStep.apply(body, u, self.context, self.leaf)


# ---------------------------------------------------------------------------------------------- straight-through modes
def straight_through(value: torch.Tensor, grad_path: torch.Tensor) -> torch.Tensor:
    """Forward = value (detached), backward = the gradient of grad_path.  bpda: grad_path = x (identity);
    surrogate: grad_path = the surrogate purifier's output."""
    return value.detach() + (grad_path - grad_path.detach())


def saved_bytes(fn: Callable[[], torch.Tensor], exclude=frozenset()) -> tuple[torch.Tensor, int]:
    """Run fn() and count the bytes autograd keeps for backward (unique storages, less those whose data_ptr is in
    `exclude`), e.g. to check that 'full' stores one state per step.  Returns (fn's output, bytes)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        st = t.untyped_storage()
        if st.data_ptr() not in exclude:
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())
