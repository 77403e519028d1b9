"""Cache keys and sweep identities follow what determines a result: code, weights, data and settings — and nothing
else (a docs-only change keeps them)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from fastpurify import _version
from fastpurify.attacks.adaptive import default_attacks
from fastpurify.evaluation.compare import cache_key
from fastpurify.evaluation.defences import build_defence
from fastpurify.evaluation.fingerprint import tensors_fingerprint, weights_fingerprint
from fastpurify.evaluation.protocol import ProtocolConfig
from fastpurify.evaluation.sweep.config import ConfigError, config_id
from fastpurify.evaluation.sweep.plan import load_config
from fastpurify.evaluation.sweep.shards import ensure_sweep_dir, manifest_lines
from fastpurify.zoo import digits, digits_aux

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sweep_digits.toml"


@pytest.fixture(scope="module")
def setup():
    models, aux = digits(), digits_aux()
    x, y = models.test_data()
    return models, aux, x[:4].clone(), y[:4].clone()


def _key(models, aux, x, y, name="agdm"):
    """The compare's key for one defence, built as evaluate_cached builds it."""
    defence = build_defence(name, models.diffusion, models.classifier, aux)
    attacks = default_attacks(defence, steps=5, eot=2)
    return cache_key(defence, attacks, split="test", ids=torch.arange(len(x)), cfg=ProtocolConfig(eps=0.15),
                     settings=None, t_star=None, x=x, y=y, networks=(models.diffusion, models.classifier, aux))


def test_same_inputs_same_key_even_for_fresh_copies(setup):
    models, aux, x, y = setup
    assert _key(models, aux, x, y) == _key(copy.deepcopy(models), copy.deepcopy(aux), x.clone(), y.clone())


def test_default_step_size_changes_the_key(setup, monkeypatch):
    models, aux, x, y = setup
    before = _key(models, aux, x, y)
    monkeypatch.setattr("fastpurify.attacks.adaptive.default_step_size", lambda eps: eps / 8)
    assert _key(models, aux, x, y) != before


@pytest.mark.parametrize("network", ["classifier", "diffusion", "aux"])
def test_weights_change_the_key(setup, network):
    models, aux, x, y = setup
    before = _key(models, aux, x, y)
    models2, aux2 = copy.deepcopy(models), copy.deepcopy(aux)
    net = aux2 if network == "aux" else getattr(models2, network)
    with torch.no_grad():
        if network == "classifier":  # zeroed
            for p in net.parameters():
                p.zero_()
        else:  # one weight perturbed by 1e-6
            next(net.parameters()).view(-1)[0] += 1e-6
    assert _key(models2, aux2, x, y) != before


def test_data_contents_change_the_key(setup):
    models, aux, x, y = setup
    before = _key(models, aux, x, y)
    x2 = x.clone()
    x2[0, 0, 0, 0] = 1.0 - x2[0, 0, 0, 0]
    assert _key(models, aux, x2, y) != before
    assert _key(models, aux, x, (y + 1) % 10) != before


def test_code_fingerprint_and_version_change_the_key(setup, monkeypatch):
    models, aux, x, y = setup
    before = _key(models, aux, x, y)
    monkeypatch.setattr(_version, "code_fingerprint", lambda: "0" * 16)
    bumped = _key(models, aux, x, y)
    assert bumped != before
    monkeypatch.setattr(_version, "__version__", "9.9.9")
    assert _key(models, aux, x, y) != bumped


def _fake_checkout(root: Path) -> Path:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("A = 1\n")
    (root / "pkg" / "sub" / "k.cpp").write_text("int f();\n")
    (root / "csrc").mkdir()
    (root / "csrc" / "op.cu").write_text("// kernel\n")
    (root / "docs").mkdir()
    (root / "docs" / "guide.txt").write_text("# guide\n")
    (root / "tests").mkdir()
    (root / "tests" / "test_a.py").write_text("def test(): pass\n")
    return root / "pkg"


def test_fingerprint_covers_package_code_only(tmp_path, monkeypatch):
    """Docs and tests beside the package leave the fingerprint (and so every key) alone; package and csrc sources
    change it."""
    monkeypatch.setattr(_version, "_PACKAGE", _fake_checkout(tmp_path))

    def fp():
        return _version.code_fingerprint.__wrapped__()

    base = fp()
    (tmp_path / "docs" / "guide.txt").write_text("# guide, reworded\n")
    (tmp_path / "tests" / "test_a.py").write_text("def test(): assert True\n")
    (tmp_path / "pkg" / "notes.txt").write_text("not code\n")
    assert fp() == base
    (tmp_path / "pkg" / "__init__.py").write_text("A = 2\n")
    changed = fp()
    assert changed != base
    (tmp_path / "csrc" / "op.cu").write_text("// kernel v2\n")
    assert fp() != changed


def test_fingerprint_helpers():
    a = torch.nn.Linear(3, 2)
    b = copy.deepcopy(a)
    assert weights_fingerprint(a, None) == weights_fingerprint(b, None) != weights_fingerprint(None, b)
    with torch.no_grad():
        b.bias[0] += 1e-7
    assert weights_fingerprint(a) != weights_fingerprint(b)
    t = torch.arange(6.0)
    assert tensors_fingerprint(t) == tensors_fingerprint(t.clone()) != tensors_fingerprint(t.view(2, 3))
    assert tensors_fingerprint(t) != tensors_fingerprint(t.double())
    with pytest.raises(TypeError):
        weights_fingerprint(torch.zeros(2))


# ------------------------------------------------------------------------------------------------ sweeps
def _cfg(tmp_path):
    return load_config(EXAMPLE, [f"out={json.dumps(str(tmp_path / 'out'))}"])


def test_sweep_config_id_includes_the_code(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    before = config_id(cfg)
    monkeypatch.setattr(_version, "code_fingerprint", lambda: "0" * 16)
    assert config_id(cfg) != before


def test_sweep_resume_with_other_code_is_refused(tmp_path, monkeypatch):
    manifest = manifest_lines([0, 1], [3, 4], str)
    ensure_sweep_dir(_cfg(tmp_path), manifest)
    ensure_sweep_dir(_cfg(tmp_path), manifest)  # the same code resumes
    monkeypatch.setattr(_version, "code_fingerprint", lambda: "0" * 16)
    with pytest.raises(ConfigError, match=r"changed: code\.fingerprint\."):
        ensure_sweep_dir(_cfg(tmp_path), manifest)
