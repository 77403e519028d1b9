"""purify(..., backend=b) agrees with backend='torch' for every backend available here and every sampler family."""

import pytest

from tests import op_checks as C
from tests.utils import available_backends_for, one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BACKENDS = [b for b in available_backends_for("sampler_step") if b != "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("preset, kw", C.E2E_CASES, ids=C.E2E_IDS)
def test_purify_backend_agrees_with_torch(backend, preset, kw):
    C.check_purify_agrees(backend, preset, kw, grad=preset in ("ddpm", "diffpure") and "steps" not in kw)
