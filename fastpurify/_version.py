"""The package version and a fingerprint of its code, in one place below everything that reports them."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"

_PACKAGE = Path(__file__).resolve().parent
_CODE_SUFFIXES = (".py", ".cpp", ".cu", ".cuh", ".h")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 (16 hex) over the version and every source file of the installed package (path and bytes), so a cache
    or a resumed sweep keyed on it is invalidated by any code change, and by nothing else: docs, tests and benchmarks
    live outside the package, and a commit that touches only them leaves it unchanged.  The compiled extension's
    sources (csrc/ beside the package in a source checkout) are included where they are present."""
    h = hashlib.sha256(__version__.encode())
    for root in (_PACKAGE, _PACKAGE.parent / "csrc"):
        for p in sorted(root.rglob("*")) if root.is_dir() else ():
            if p.suffix in _CODE_SUFFIXES and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(root.parent)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]
