"""Shared test helpers: backends generated from the registry, verbose closeness checks, an analytic denoiser."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fastpurify import ops  # noqa: F401  (registers the ops)
from fastpurify.ops.registry import backends_for
from fastpurify.schedules import get_ddpm_schedule, get_vpsde_schedule


def available_backends_for(op: str, device: str = "cpu", dtype=torch.float32) -> list[str]:
    """Names of the registered backends that can run `op` here (the test matrix comes from the registry)."""
    return [n for n, b in backends_for(op).items() if b.why_not(torch.device(device), dtype) is None]


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch (and the C++ ops) on one CPU thread for a module whose time goes into eager reference ops on small
    tensors: on a shared 2-core machine idle OpenMP workers stall each such op by milliseconds (measured: the Philox
    reference at 64×3×32×32 takes 2.5 s with 2 threads under load, 36 ms with 1).  Results do not depend on it;
    test_api and test_samplers still run the C++ ops multi-threaded."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def backend_dtype_pairs(op: str, dtypes, device: str = "cpu") -> list[tuple[str, torch.dtype]]:
    """(backend, dtype) for every dtype in `dtypes` that each available backend declares."""
    return [(b, d) for d in dtypes for b in available_backends_for(op, device, d)]


def assert_close_verbose(actual, expected, atol, rtol, what=""):
    diff = (actual.double() - expected.double()).abs()
    ok = bool((diff <= atol + rtol * expected.double().abs()).all())
    assert ok, f"{what}: max diff {diff.max():.3e}, mean diff {diff.mean():.3e} (atol {atol}, rtol {rtol})"


class GaussianEps(nn.Module):
    """The exact ε-predictor for data u0 ~ N(mu, s0²·I):  E[z | u_t] = b (u − a·mu) / (a² s0² + b²),
    a = √ᾱ, b = √(1 − ᾱ).  s0 = 0 is a point mass (then x̂₀ = mu exactly).  Drives the samplers like a UNet."""

    def __init__(self, mu: float, s0: float, channels: int = 1, image_size: int = 4):
        super().__init__()
        self.mu, self.s0 = mu, s0
        self.channels, self.image_size, self.time_input = channels, image_size, "index"
        self.schedule = get_ddpm_schedule()
        self.sde = get_vpsde_schedule()
        self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)  # gives the module a device and dtype

    def _eps(self, u, abar):
        a, b = math.sqrt(abar), math.sqrt(1 - abar)
        return b * (u - a * self.mu) / (a * a * self.s0 ** 2 + b * b)

    def eps_at_index(self, u, i):
        return self._eps(u, self.schedule.abar(i))

    def eps_at_time(self, u, s):
        return self._eps(u, self.sde.abar(s))
