"""The package's imports run downward only, with no cycles: every import — module-level, inside functions, and
module names handed to importlib — goes from a layer to the same or a lower one of the order written in
docs/DESIGN.md ("Layers"), no two files import each other in a loop, and nothing outside `fastpurify.ops` imports the
ops' reference specs (the op API re-exports what others need)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastpurify"
LAYER_LINE = re.compile(r"^layer\s+(\d+)\s+(.+)$")


def layer_order(design: str) -> dict[str, int]:
    """{module prefix: layer} from the fenced block of docs/DESIGN.md's "## Layers" section."""
    section = design.split("## Layers", 1)[1].split("\n## ", 1)[0]
    block = section.split("```", 2)[1]
    order = {}
    for line in block.splitlines():
        m = LAYER_LINE.match(line.strip())
        if m:
            order.update({name: int(m.group(1)) for name in m.group(2).split()})
    return order


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p): p for p in package.rglob("*.py") if "__pycache__" not in p.parts}


COMPILED = {"fastpurify._C"}  # the extension module: imported, never read


def _resolve(current: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every package module that `name` imports: import statements anywhere in the file (functions included), and
    module names given as strings in functions that call importlib.import_module / __import__."""
    tree, is_pkg = ast.parse(path.read_text()), path.name == "__init__.py"
    found = set()

    def add(mod: str, names=()):
        for m in [f"{mod}.{n}" for n in names] + [mod]:
            if m in known:
                found.add(m)
                break
        else:
            while mod and mod not in known:
                mod = mod.rpartition(".")[0]
            if mod:
                found.add(mod)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, is_pkg, node.level, node.module) if node.level else node.module or ""
            for a in node.names:
                add(mod, [a.name])
    if _calls_importlib(tree):  # names handed to importlib: any module name written as a string in the file
        package = name if is_pkg else name.rpartition(".")[0]
        for s in (c.value for c in ast.walk(tree) if isinstance(c, ast.Constant) and isinstance(c.value, str)):
            for cand in (s, f"{package}.{s}") if s != "__main__" else ():  # `if __name__ == "__main__"` is no import
                if cand in known:
                    found.add(cand)
    found.discard(name)
    return {m for m in found if m == "fastpurify" or m.startswith("fastpurify.")}


def _calls_importlib(node) -> bool:
    return any(isinstance(c, ast.Call) and getattr(c.func, "attr", getattr(c.func, "id", "")) in
               ("import_module", "__import__") for c in ast.walk(node))


def layer_of(module: str, order: dict[str, int]) -> int | None:
    best = max((p for p in order if module == p or module.startswith(p + ".")), key=len, default=None)
    return None if best is None else order[best]


def violations(mods: dict[str, Path], order: dict[str, int]) -> list[str]:
    known, bad = set(mods) | COMPILED, []
    graph = {m: imports(m, p, known) for m, p in mods.items()}
    for m, targets in sorted(graph.items()):
        lm = layer_of(m, order)
        if lm is None:
            bad.append(f"{m}: in no layer of docs/DESIGN.md")
            continue
        for t in sorted(targets):
            lt = layer_of(t, order)
            if lt is not None and lt > lm:
                bad.append(f"{m} (layer {lm}) imports {t} (layer {lt}): upward")
            if t.startswith("fastpurify.ops.reference") and not m.startswith("fastpurify.ops"):
                bad.append(f"{m} imports the spec {t}: use fastpurify.ops")
    bad += [f"cycle: {' -> '.join(c)}" for c in cycles(graph)]
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One loop per strongly connected component of more than one file (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_layer_order_is_written_once_in_the_docs():
    order = layer_order((ROOT / "docs/DESIGN.md").read_text())
    assert "fastpurify.ops" in order and "fastpurify.evaluation" in order
    assert order["fastpurify.ops"] < order["fastpurify.samplers"] < order["fastpurify.api"] < order["fastpurify.evaluation"]


def test_imports_run_downward_without_cycles():
    order = layer_order((ROOT / "docs/DESIGN.md").read_text())
    bad = violations(modules(), order)
    assert not bad, "\n".join(bad)


def test_the_check_sees_what_it_must(tmp_path):
    """Upward imports at module level, inside a function and through importlib, a cycle through function-level
    imports, and a reach into the ops' specs are all reported (so a clean run above means something)."""
    pkg = tmp_path / "fastpurify"
    for rel, text in {
        "__init__.py": "",
        "ops/__init__.py": "from .reference import spec\n",
        "ops/reference/__init__.py": "", "ops/reference/spec.py": "",
        "low.py": "def f():\n    from . import high\n",
        "high.py": "from .ops.reference.spec import x\nimport importlib\n"
                   "def g():\n    return importlib.import_module('fastpurify.top')\n",
        "top.py": "from . import low\n",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    order = {"fastpurify.ops": 1, "fastpurify.low": 2, "fastpurify.high": 3, "fastpurify.top": 4, "fastpurify": 5}
    mods = {m: p for m, p in ((".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"), p)
                              for p in pkg.rglob("*.py"))}
    bad = "\n".join(violations(mods, order))
    assert "fastpurify.low (layer 2) imports fastpurify.high (layer 3): upward" in bad
    assert "fastpurify.high (layer 3) imports fastpurify.top (layer 4): upward" in bad
    assert "fastpurify.high imports the spec fastpurify.ops.reference.spec" in bad
    assert "cycle: fastpurify.high -> fastpurify.low -> fastpurify.top" in bad
