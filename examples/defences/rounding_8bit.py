"""The noisy blur rounded to 8 bits: zero gradient almost everywhere (shattered gradients).
Expected verdict: not reliable — zero-gradient elements, gradient against finite differences."""

from _fixture import build_fixture


def build():
    """(classifier, purifier): the embedded digits classifier behind the fixture, as plain torch modules."""
    return build_fixture("rounding")
