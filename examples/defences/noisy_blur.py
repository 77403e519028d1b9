"""The honest base of the masking fixtures: a 3×3 blur plus Gaussian noise, exact autograd gradient.
Expected verdict: reliable."""

from _fixture import build_fixture


def build():
    """(classifier, purifier): the embedded digits classifier behind the fixture, as plain torch modules."""
    return build_fixture("none")
