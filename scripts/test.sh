#!/usr/bin/env bash
# The test command (README, .ci/run): set up if needed, then the default CPU lane.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the heavier tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
# Second lane: the Triton kernels in Triton's interpreter on the CPU (the variable must be set before Python starts).
TRITON_INTERPRET=1 python -m pytest -m interpret tests/test_triton_interpret.py
