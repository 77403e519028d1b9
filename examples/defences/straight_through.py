"""The noisy blur run under no_grad and re-attached to its input: the backward pass is the identity.
Expected verdict: not reliable — the gradient does not match finite differences (straight-through)."""

from _fixture import build_fixture


def build():
    """(classifier, purifier): the embedded digits classifier behind the fixture, as plain torch modules."""
    return build_fixture("straight_through")
