"""Pure reverse samplers over a denoiser (`EpsDiffusion`): DDPM ancestral, generalised-η DDIM, VP-SDE EM.
Each builds its (n, 7) coefficient table once (`*_coefficients`) and runs every step as one ops.sampler_step."""

from .ddim import ddim_coefficients, sample_ddim
from .ddpm import ddpm_coefficients, sample_ddpm
from .noise import NoiseStreams
from ..schedules import get_ddpm_schedule, get_vpsde_schedule, respaced_indices, vpsde_grid
from .vpsde import sample_vpsde, vpsde_coefficients

__all__ = ["sample_ddpm", "sample_ddim", "sample_vpsde", "NoiseStreams", "get_ddpm_schedule", "get_vpsde_schedule",
           "respaced_indices", "vpsde_grid", "ddpm_coefficients", "ddim_coefficients", "vpsde_coefficients"]
