"""Every op × backend: the torch reference, the C++ CPU kernels, Triton (fastpurify/kernels) and CUDA (csrc/cuda).

Each entry declares devices, dtypes and `available()` (docs/DESIGN.md decision 2); ops/__init__.py picks one through registry.select.
The C++ and CUDA backends call the same `torch.ops.fastpurify.*` schemas: the dispatcher runs the kernel of the
inputs' device.  Triton modules are imported on first use, so `import fastpurify` never imports Triton.
"""

from __future__ import annotations

import math

import torch

from . import _ext
from .registry import Backend, register
from .reference.forward_diffusion import forward_diffuse_bwd_ref, forward_diffuse_ref
from .reference.philox import normal_ref, philox_bits
from .reference.sampler_step import (
    guidance_accumulate_bwd_ref,
    guidance_accumulate_ref,
    sampler_step_bwd_ref,
    sampler_step_ref,
)

F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
OPS = ("forward_diffuse", "sampler_step", "guidance_accumulate")  # differentiable, in the inputs' dtype
DRAWS = ("normal", "philox_bits")  # noise: float32 normals and their raw int64 words, from int64 seeds


def _always() -> str | None:
    return None


# ---------------------------------------------------------------------------------------------- torch (the spec)
REFERENCE = {
    "forward_diffuse": {"fwd": forward_diffuse_ref, "bwd": forward_diffuse_bwd_ref},
    "sampler_step": {"fwd": sampler_step_ref, "bwd": sampler_step_bwd_ref},
    "guidance_accumulate": {"fwd": guidance_accumulate_ref, "bwd": guidance_accumulate_bwd_ref},
    "normal": {"fwd": normal_ref},
    "philox_bits": {"fwd": philox_bits},
}


# ---------------------------------------------------------------------------------------------- C++ CPU and CUDA
def _cpp_fd_fwd(x0, a, s, t, seeds, step, purpose, round):
    return torch.ops.fastpurify.forward_diffuse(x0, a, s, t, seeds, step, purpose, round)


def _cpp_fd_bwd(grad, a, t):
    return torch.ops.fastpurify.forward_diffuse_bwd(grad, a, t)


def _cpp_step_fwd(x, eps, g, gw, coef, k, seeds, clip, purpose, round):
    return torch.ops.fastpurify.sampler_step(x, eps, g, gw, coef, k, seeds, clip, purpose, round)


def _cpp_step_bwd(grad, x, eps, gw, coef, k, clip, need_g):
    gx, geps, gg = torch.ops.fastpurify.sampler_step_bwd(grad, x, eps, gw, coef, k, clip, need_g)
    return gx, geps, (gg if need_g else None)


def _cpp_acc_fwd(g, gw):
    return torch.ops.fastpurify.guidance_accumulate(g, gw)


def _cpp_acc_bwd(grad, gw):
    return torch.ops.fastpurify.guidance_accumulate_bwd(grad, gw)


def _cpp_normal(seeds, shape, step, purpose, round):
    n = math.prod(shape[1:])
    return torch.ops.fastpurify.normal(seeds, n, step, purpose, round).reshape(shape)


def _cpp_philox_bits(seeds, n, step, purpose, round):
    r0, r1 = torch.ops.fastpurify.philox_bits(seeds, n, step, purpose, round).unbind(0)
    return r0, r1


COMPILED = {
    "forward_diffuse": {"fwd": _cpp_fd_fwd, "bwd": _cpp_fd_bwd},
    "sampler_step": {"fwd": _cpp_step_fwd, "bwd": _cpp_step_bwd},
    "guidance_accumulate": {"fwd": _cpp_acc_fwd, "bwd": _cpp_acc_bwd},
    "normal": {"fwd": _cpp_normal},
    "philox_bits": {"fwd": _cpp_philox_bits},
}


# ---------------------------------------------------------------------------------------------- Triton
def _triton(name: str):
    def call(*args):
        from . import kernels  # decorates the @triton.jit kernels on first use

        return getattr(kernels, name)(*args)

    call.__name__ = name
    return call


TRITON = {op: {"fwd": _triton(f"{op}_fwd"), "bwd": _triton(f"{op}_bwd")} for op in OPS}
TRITON.update({op: {"fwd": _triton(f"{op}_fwd")} for op in DRAWS})
# Under TRITON_INTERPRET=1 the kernels run on CPU tensors (the CPU test lane); otherwise on CUDA devices only.
TRITON_DEVICES = ("cpu",) if _ext.triton_interpret() else ("cuda",)

for _op in OPS:
    register(Backend(_op, "torch", ("cpu", "cuda"), (F32, F64, F16, BF16), _always, REFERENCE[_op]))
    register(Backend(_op, "cpu", ("cpu",), (F32, F64), _ext.load_error, COMPILED[_op]))
    register(Backend(_op, "triton", TRITON_DEVICES, (F32, F16, BF16), _ext.triton_error, TRITON[_op]))
    register(Backend(_op, "cuda", ("cuda",), (F32, F16, BF16), _ext.cuda_error, COMPILED[_op]))

# The draws are selected with dtype float32 (that of the normals) on the seeds' device.
for _op in DRAWS:
    register(Backend(_op, "torch", ("cpu", "cuda"), (F32,), _always, REFERENCE[_op]))
    register(Backend(_op, "cpu", ("cpu",), (F32,), _ext.load_error, COMPILED[_op]))
    register(Backend(_op, "triton", TRITON_DEVICES, (F32,), _ext.triton_error, TRITON[_op]))
    register(Backend(_op, "cuda", ("cuda",), (F32,), _ext.cuda_error, COMPILED[_op]))
