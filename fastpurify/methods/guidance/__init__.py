"""Guided purification: adversarial guidance (AGDM), GDMP pixel guidance, and their pure-function terms."""

from .agdm import AGDMConfig, AGDMGuidance
from .gdmp import GDMPConfig, GDMPGuidance
from .terms import FeatureTap, class_log_prob, feature_distance, mse, ssim

__all__ = ["AGDMConfig", "AGDMGuidance", "GDMPConfig", "GDMPGuidance", "FeatureTap", "class_log_prob",
           "feature_distance", "mse", "ssim"]
