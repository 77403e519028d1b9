#!/usr/bin/env bash
# Set up a working checkout from nothing but Python 3.11: a .venv with the pinned dependencies and the compiled
# extension (fastpurify._C, built from csrc/ by torch.utils.cpp_extension + ninja).  Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
# --no-build-isolation: build against the torch installed above (an isolated build would fetch another torch).
python -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
python -m fastpurify.info
