"""Networks and the denoiser wrapper the samplers drive."""

from .diffusion import EpsDiffusion
from .small_cnn import SmallCNN
from .small_unet import SmallUNet

__all__ = ["EpsDiffusion", "SmallUNet", "SmallCNN"]
