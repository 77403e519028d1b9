"""What every benchmark result records about where it ran: the commit and the machine's load.  Imported by the
benchmark scripts and pytest-benchmark modules of this folder (both put it on sys.path)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def commit() -> str | None:
    """Short hash of the checkout's HEAD (None outside a git checkout)."""
    try:
        p = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                           check=False)
    except OSError:
        return None
    return p.stdout.strip() or None


def loadavg() -> float | None:
    """1-minute load average (None where the OS has none): timings taken under load are suspect."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None
