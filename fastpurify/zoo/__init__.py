"""Embedded default models: `fastpurify.zoo.digits()`."""

from .embedded import DigitsModels, digits

__all__ = ["digits", "DigitsModels"]
