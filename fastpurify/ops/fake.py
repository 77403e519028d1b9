"""Shape-only ("fake") kernels of the compiled ops, so FakeTensor tracing (torch.compile, torch.library.opcheck)
sees through torch.ops.fastpurify.* instead of breaking the graph.  Registered when fastpurify._C loads (_ext.py)."""

from __future__ import annotations

import torch


def register() -> None:
    @torch.library.register_fake("fastpurify::forward_diffuse")
    def _(x0, a, s, t, seeds, step, purpose, round):
        return torch.empty_like(x0)

    @torch.library.register_fake("fastpurify::forward_diffuse_bwd")
    def _(grad, a, t):
        return torch.empty_like(grad)

    @torch.library.register_fake("fastpurify::sampler_step")
    def _(x, eps, g, gw, coef, k, seeds, clip, purpose, round):
        return torch.empty_like(x)

    @torch.library.register_fake("fastpurify::sampler_step_bwd")
    def _(grad, x, eps, gw, coef, k, clip, need_g):
        gg = grad.new_empty((gw.shape[0],) + tuple(grad.shape)) if need_g else grad.new_empty((0,))
        return torch.empty_like(grad), torch.empty_like(grad), gg

    @torch.library.register_fake("fastpurify::guidance_accumulate")
    def _(g, gw):
        return g.new_empty(tuple(g.shape[1:]))

    @torch.library.register_fake("fastpurify::guidance_accumulate_bwd")
    def _(grad, gw):
        return grad.new_empty((gw.shape[0],) + tuple(grad.shape))

    @torch.library.register_fake("fastpurify::normal")
    def _(seeds, n, step, purpose, round):
        return seeds.new_empty((seeds.shape[0], n), dtype=torch.float32)

    @torch.library.register_fake("fastpurify::philox_bits")
    def _(seeds, n, step, purpose, round):
        return seeds.new_empty((2, seeds.shape[0], n), dtype=torch.int64)
