"""Pure reverse samplers over a denoiser (`EpsDiffusion`): DDPM ancestral, generalised-η DDIM, VP-SDE EM."""

from .ddim import sample_ddim
from .ddpm import sample_ddpm
from .noise import NoiseStreams
from .schedules import get_ddpm_schedule, get_vpsde_schedule, respaced_indices, vpsde_grid
from .vpsde import sample_vpsde

__all__ = ["sample_ddpm", "sample_ddim", "sample_vpsde", "NoiseStreams", "get_ddpm_schedule", "get_vpsde_schedule",
           "respaced_indices", "vpsde_grid"]
