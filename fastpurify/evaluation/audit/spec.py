"""SPEC → the user's modules: `package.module:function` (importable from the current directory or PYTHONPATH) or
`path/to/file.py:function`; the function returns (classifier, purifier) — two nn.Modules on [0, 1] NCHW images —
or one nn.Module doing both (x → logits)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from .blackbox import AuditError

FORMS = "'package.module:function' or 'path/to/file.py:function'"


@dataclass
class Loaded:
    spec: str
    classifier: nn.Module | None  # None: one module doing both (then `purifier` returns logits)
    purifier: nn.Module

    @property
    def combined(self) -> bool:
        return self.classifier is None


def _import_file(path: Path):
    if not path.is_file():
        raise AuditError(f"SPEC file {str(path)!r} does not exist")
    name = f"_fastpurify_audit_{abs(hash(str(path.resolve())))}"
    loader = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(loader)
    sys.path.insert(0, str(path.parent.resolve()))  # the file's own helpers beside it
    try:
        loader.loader.exec_module(module)
    except Exception as e:
        raise AuditError(f"importing {str(path)!r} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.pop(0)
    return module


def _import_module(name: str):
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise AuditError(f"cannot import {name!r} ({e}): put it on PYTHONPATH or run from its directory, or give "
                         "'path/to/file.py:function'") from e
    except Exception as e:
        raise AuditError(f"importing {name!r} failed: {type(e).__name__}: {e}") from e
    finally:
        if added:
            sys.path.remove(cwd)


def load(spec: str) -> Loaded:
    """Import SPEC's factory, call it with no arguments and check what it returns."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise AuditError(f"bad SPEC {spec!r}: expected {FORMS}")
    where, fn_name = spec.split(":")
    module = _import_file(Path(where)) if where.endswith(".py") else _import_module(where)
    factory = getattr(module, fn_name, None)
    if factory is None:
        raise AuditError(f"{where!r} has no attribute {fn_name!r}")
    if not callable(factory):
        raise AuditError(f"{spec}: {fn_name!r} is not callable (a factory function returning the defence)")
    try:
        built = factory()
    except Exception as e:
        raise AuditError(f"{spec}() failed: {type(e).__name__}: {e}") from e
    if isinstance(built, nn.Module):
        return Loaded(spec, None, built)
    if isinstance(built, tuple) and len(built) == 2 and all(isinstance(m, nn.Module) for m in built):
        return Loaded(spec, built[0], built[1])
    raise AuditError(f"{spec}() returned {type(built).__name__}: expected (classifier, purifier), two "
                     "nn.Modules, or one nn.Module doing both")
