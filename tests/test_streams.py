"""One table of random streams (fastpurify.ops.streams): purposes and salts are distinct, and the package's users
of salts take them from the table (a salt written out anywhere else would be a second, unchecked name)."""

import re
from pathlib import Path

from fastpurify.ops import streams

PACKAGE = Path(__file__).resolve().parents[1] / "fastpurify"


def test_purposes_and_salts_are_distinct():
    assert len(set(streams.PURPOSES.values())) == len(streams.PURPOSES)
    assert len(set(streams.SALTS.values())) == len(streams.SALTS)
    assert all(s % (1 << 40) == 0 and s > 0 for s in streams.SALTS.values())


def test_no_salt_is_written_outside_the_table():
    pattern = re.compile(r"\b\d+\s*<<\s*40\b")
    found = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
             if p.name != "streams.py" and pattern.search(p.read_text())]
    assert not found, f"salts written outside fastpurify/ops/streams.py: {found}"
