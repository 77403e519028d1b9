"""A calibrated time estimate and a progress bar for a protocol run (the demo prints both before and during work).

The cost of a run is almost all purification: rows through the purifier without a backward pass (selection and
report draws, the clean draws, transfer candidates) and rows with one (every step × EOT draw of an attack whose
gradient goes through the purifier).  `calibrate` times one of each on this machine; `plan` counts the rows the
attack list will need; `Meter` counts the rows as the purifier sees them (a forward pre-hook) and turns them into
seconds of estimated work, which a tqdm bar shows with its ETA in a terminal.  Escalations (an attack rerun with
more steps when its convergence check asks for it) are not in the plan: they add to the estimate, which says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Costs:
    forward: float   # seconds per row, purification + classifier, no backward
    gradient: float  # seconds per row, with the exact backward pass through every step


@dataclass(frozen=True)
class Plan:
    forward_rows: int
    gradient_rows: int

    def seconds(self, c: Costs) -> float:
        return self.forward_rows * c.forward + self.gradient_rows * c.gradient


def calibrate(defence, x: torch.Tensor, y: torch.Tensor, rows: int = 8) -> Costs:
    """Time one no-grad forward and one exact forward + backward of `rows` images (after a warm-up call)."""
    xs, ys = x[:rows], y[:rows]
    seeds = torch.arange(len(xs))
    with torch.no_grad():
        defence.logits(xs, seeds)  # warm-up: first-call allocations and lazy initialisation
        t0 = time.perf_counter()
        defence.logits(xs, seeds)
        forward = (time.perf_counter() - t0) / len(xs)

    def exact_gradient(n: int) -> None:
        xg = xs[:n].clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(defence.logits(xg, seeds[:n], grad="full"), ys[:n])
        torch.autograd.grad(loss, xg)

    exact_gradient(1)  # warm-up of the backward pass
    t0 = time.perf_counter()
    exact_gradient(len(xs))
    gradient = (time.perf_counter() - t0) / len(xs)
    return Costs(forward, gradient)


def plan(specs, n: int, cfg) -> Plan:
    """Rows the protocol will push through the purifier for `specs` on n images (every attack on every sample)."""
    draws = cfg.n_reevals + (cfg.n_select or cfg.n_reevals)
    forward, gradient = cfg.n_reevals * n, 0
    for s in specs:
        forward += draws * n
        work = s.steps * s.eot * n
        if not s.through_purifier:  # the classifier or φ alone, the forward noise: no purifier backward
            continue
        if s.grad == "bpda":
            forward += work  # the purifier runs forward only; the backward is the identity
        else:
            gradient += work
    if cfg.large_eps is not None:
        k = min(cfg.large_eps_n, n)
        gradient += cfg.large_eps_steps * k
        forward += draws * k
    return Plan(forward, gradient)


class Meter:
    """Counts purifier rows (forward pre-hook) as estimated seconds; a tqdm bar with ETA when stderr is a terminal."""

    def __init__(self, defence, costs: Costs, total_seconds: float, desc: str):
        from tqdm import tqdm

        self.costs, self.done = costs, 0.0
        self.bar = tqdm(total=round(total_seconds), desc=desc, unit="s", disable=None, leave=False,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, ETA {remaining}")
        self.handle = defence.purifier.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        backward = torch.is_grad_enabled() and x.requires_grad and kwargs.get("grad") not in ("bpda", "none")
        step = x.shape[0] * (self.costs.gradient if backward else self.costs.forward)
        self.done += step
        self.bar.update(min(step, max(self.bar.total - self.bar.n, 0)))

    def close(self) -> float:
        """Remove the hook; the estimated seconds of work that went through the purifier."""
        self.handle.remove()
        self.bar.close()
        return self.done
