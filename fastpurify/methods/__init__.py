"""Purification methods assembled from the samplers: DiffPure, GDMP, AGDM (guidance/) and multi-round, plus the
wrappers that reports and sweeps put around a purifier."""

from .build import DIGITS, build_method, with_scale
from .multiround import AGGREGATIONS, EnsembleClassifier, MultiRound
from .wrappers import MethodPurifier, ResizePurifier

__all__ = ["DIGITS", "build_method", "with_scale", "MultiRound", "EnsembleClassifier", "AGGREGATIONS",
           "MethodPurifier", "ResizePurifier"]
