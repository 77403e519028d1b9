"""The noisy blur plus a guidance term computed from x but detached, presented as exact.
Expected verdict: not reliable — the gradient does not match finite differences (approximate gradient)."""

from _fixture import build_fixture


def build():
    """(classifier, purifier): the embedded digits classifier behind the fixture, as plain torch modules."""
    return build_fixture("detached")
