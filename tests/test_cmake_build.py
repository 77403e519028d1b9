"""The standalone CMake build of csrc/ (CMakeLists.txt) and its C++ tests (ctest).  setup.py builds the package;
CMake builds the same sources beside it (README, "Backends and build").

Default lane: the torch-free noise target (csrc/cpu/noise.cpp) and its ctest — Philox known answers and Box–Muller
accuracy over every u1 and u2 on every instruction set this CPU runs (≈ 11 s).  Slow lane (-m slow): the whole build
(ops, CUDA kernels where a toolkit is found, the Python module) and all three ctests (≈ 4 min on 2 cores)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The venv's cmake (requirements-dev.txt) first, then the system's.
CMAKE = shutil.which("cmake", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
pytestmark = pytest.mark.skipif(CMAKE is None, reason="no cmake (pip install -r requirements-dev.txt)")


def _run(args, timeout, **kw):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    assert p.returncode == 0, f"{' '.join(map(str, args))} failed:\n{(p.stdout + p.stderr)[-4000:]}"
    return p.stdout


def _ctest(build: Path, timeout: int) -> str:
    ctest = str(Path(CMAKE).with_name("ctest"))
    return _run([ctest, "--test-dir", str(build), "--output-on-failure", "-V"], timeout)


def test_cmake_builds_and_tests_the_noise_library(tmp_path):
    build = tmp_path / "build"
    _run([CMAKE, "-S", str(ROOT), "-B", str(build), "-DFASTPURIFY_WITH_TORCH=OFF"], 300)
    _run([CMAKE, "--build", str(build), "-j", "2"], 300)
    out = _ctest(build, 300)
    assert "100% tests passed" in out and "Box-Muller max error" in out, out[-2000:]


@pytest.mark.slow
def test_cmake_builds_the_extension_and_passes_ctest(tmp_path):
    build = tmp_path / "build"
    _run([CMAKE, "-S", str(ROOT), "-B", str(build), f"-DPython3_EXECUTABLE={sys.executable}"], 600)
    _run([CMAKE, "--build", str(build), "-j", "2"], 1200)
    out = _ctest(build, 600)
    for name in ("noise", "ops", "module"):
        assert f": {name} " in out, f"ctest {name} missing"
    assert "100% tests passed" in out, out[-2000:]
