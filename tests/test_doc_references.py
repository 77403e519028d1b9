"""Every document the repository cites is in the repository: Markdown links and `*.md` names in code, tests,
benchmarks, scripts, examples, README and docs/ resolve to a tracked file; and nothing cites the project's issue
tracker (the code and docs explain themselves)."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("fastpurify", "tests", "benchmarks", "scripts", "examples", "docs", "README.md", "setup.py", "csrc",
           "CMakeLists.txt", "pyproject.toml", ".ci")
SUFFIXES = {".py", ".md", ".toml", ".sh", ".txt", ".cpp", ".h", ".cu", ".cuh", ".cfg", ""}
# Names of files that our commands WRITE (not documents we cite): a mention is an output, not a reference.
WRITTEN = {"report.md"}
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
MD_NAME = re.compile(r"(?<![\w./-])((?:\.\./|\./)?[\w./-]*[\w-]\.md)\b")
ISSUE = re.compile(r"\b[Ii]ssues? ?#?\d+\b|(?:(?<=\s)|(?<=\())#\d{1,3}\b(?![\w-])")


def tracked() -> list[Path]:
    """Tracked text files under SCANNED, except this test (its examples are broken references on purpose)."""
    out = subprocess.run(["git", "ls-files", "--", *SCANNED], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / p for p in out.stdout.split()
            if Path(p).suffix in SUFFIXES and (ROOT / p).is_file() and ROOT / p != Path(__file__).resolve()]


def resolves(name: str, where: Path) -> bool:
    """A path relative to the citing file's folder, or to the repository root."""
    name = name.split("#", 1)[0]
    return not name or (where.parent / name).exists() or (ROOT / name).exists()


def references(text: str, markdown: bool = True) -> set[str]:
    """Markdown links (in Markdown files: in code `f(x)[i](y)` is no link) and every `*.md` name."""
    links = LINK.findall(text) if markdown else []
    links = [t for t in links if not re.match(r"[a-z]+:", t) and not t.startswith(("#", "{"))]
    names = [n for n in MD_NAME.findall(text) if Path(n).name not in WRITTEN]
    return set(links + names)


def test_the_scan_finds_what_it_should():
    """The patterns themselves: a broken link, a bare name, a path into another checkout and an issue number are
    all caught (so a clean run below means something)."""
    text = "see [the methods](docs/NOPE.md), METHODS.md §3, ../shared/docs/EVALUATION.md, report.md; fixes issue 16"
    assert references(text) == {"docs/NOPE.md", "METHODS.md", "../shared/docs/EVALUATION.md"}
    assert references("y = f(x)[0](h)", markdown=False) == set()
    assert not resolves("METHODS.md", ROOT / "fastpurify" / "api.py")
    assert resolves("docs/METHODS.md", ROOT / "fastpurify" / "api.py")
    assert resolves("METHODS.md", ROOT / "docs" / "README.md")
    assert ISSUE.search(text) and ISSUE.search("(#26)") and not ISSUE.search("x[#2]; sm_90; &#8203;")


@pytest.mark.parametrize("path", tracked(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_document_is_in_the_repository(path):
    text = path.read_text(errors="replace")
    missing = sorted(r for r in references(text, markdown=path.suffix == ".md") if not resolves(r, path))
    assert not missing, f"{path.relative_to(ROOT)} cites files that are not in the repository: {missing}"


@pytest.mark.parametrize("path", [p for p in tracked() if "results" not in p.parts],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers(path):
    hits = sorted({m.group(0) for m in ISSUE.finditer(path.read_text(errors="replace"))})
    assert not hits, f"{path.relative_to(ROOT)} cites the issue tracker ({hits}): say what and why instead"
