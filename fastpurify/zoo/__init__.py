"""Embedded default models: `fastpurify.zoo.digits()`."""

from .digits import DigitsModels, digits

__all__ = ["digits", "DigitsModels"]
