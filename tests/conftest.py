import pytest
import torch

from tests.utils import available_backends_for  # noqa: F401  (re-exported for test modules)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
