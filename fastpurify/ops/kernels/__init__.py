"""Triton backend: `_<op>_fwd_kernel`/`_<op>_bwd_kernel` (@triton.jit) behind `<op>_fwd`/`<op>_bwd` launchers.

Imported on first use by fastpurify.ops.backends, never by `import fastpurify`.  Under TRITON_INTERPRET=1 (set before
Python starts) the kernels run in Triton's interpreter on CPU tensors: that is the CPU test lane.
"""

from .forward_diffuse import forward_diffuse_bwd, forward_diffuse_fwd
from .noise import normal_fwd, philox_bits_fwd
from .sampler_step import guidance_accumulate_bwd, guidance_accumulate_fwd, sampler_step_bwd, sampler_step_fwd

__all__ = ["forward_diffuse_fwd", "forward_diffuse_bwd", "sampler_step_fwd", "sampler_step_bwd",
           "guidance_accumulate_fwd", "guidance_accumulate_bwd", "normal_fwd", "philox_bits_fwd"]
