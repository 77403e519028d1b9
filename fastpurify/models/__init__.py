"""Networks and the denoiser wrapper the samplers drive; ports of the public pretrained architectures and loaders."""

from .diffusion import EpsDiffusion
from .loaders import CheckpointError, load_classifier, load_diffusion, save_pretrained
from .pretrained import PretrainedDiffusion
from .small_cnn import SmallCNN
from .small_unet import SmallUNet

__all__ = ["EpsDiffusion", "SmallUNet", "SmallCNN", "PretrainedDiffusion", "CheckpointError",
           "load_diffusion", "load_classifier", "save_pretrained"]
