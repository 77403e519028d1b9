"""Embedded default models: `fastpurify.zoo.digits()`."""

from .embedded import DigitsModels, digits, digits_aux

__all__ = ["digits", "digits_aux", "DigitsModels"]
