"""`fastpurify sweep` without running a model: config validation and overrides, every data format from small
generated files, manifest and shards, crash-safe records, merge / completeness / duplicates and the report."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from fastpurify.evaluation.sweep.config import ConfigError, apply_override, config_id
from fastpurify.evaluation.sweep.data import DataConfig, open_dataset, read_cifar_batch, select_ids
from fastpurify.evaluation.sweep.merge import merge, status
from fastpurify.evaluation.sweep.plan import load_config
from fastpurify.evaluation.sweep.records import RecordWriter, read_shards, same_outcome
from fastpurify.evaluation.sweep.report import IncompleteSweep, accuracies, wilson_ci, write_report
from fastpurify.evaluation.sweep.shards import (
    DistEnv,
    batches,
    ensure_sweep_dir,
    manifest_lines,
    manifest_sha256,
    my_work,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sweep_digits.toml"


def _cfg(tmp_path, *sets):
    return load_config(EXAMPLE, [f"out={json.dumps(str(tmp_path / 'out'))}", *sets])


# ------------------------------------------------------------------------------------------------ config
def test_example_config_resolves(tmp_path):
    cfg = _cfg(tmp_path)
    assert [m.label for m in cfg.methods] == ["none", "diffpure", "diffpure@30"]
    assert cfg.ensemble == "pgd-full+pgd-bpda" and cfg.attacks[1].grad == "bpda" and cfg.attacks[0].grad == "full"
    assert cfg.attacks[0].step_size == pytest.approx(2.5 * 0.15 / 10)
    # Runtime-only fields leave the config id alone; result fields change it.
    assert config_id(_cfg(tmp_path, "batch_size=3", "threads=1", "quiet=true")) == config_id(cfg)
    assert config_id(_cfg(tmp_path, "eps=0.1")) != config_id(cfg)



def test_default_ensemble_gives_each_method_the_protocols_attack_list(tmp_path):
    """[default_ensemble] writes out fastpurify.attacks.default_attacks per method: PGD-det for the classifier
    alone, the randomised list for purifiers, and for AGDM the attacks on φ, the joint loss and its variant."""
    cfg = _cfg(tmp_path, 'methods=[{name="none"}, {name="diffpure", t_star=20}, {name="agdm", t_star=5}]',
               'model.aux="digits"', "default_ensemble.use=true", "default_ensemble.steps=3",
               "default_ensemble.eot=2")
    by_name = {a.name: a for a in cfg.attacks}
    none, diffpure, agdm = (m.attacks for m in cfg.methods)
    explicit = ["pgd-full", "pgd-bpda"]  # the example's own attacks run on every method too
    assert none == ["pgd-ce-det", "apgd-ce-det", "apgd-dlr-det", "pgd-margin-det", *explicit]
    assert by_name["pgd-ce-det"].steps == 50 and by_name["apgd-dlr-det"].kind == "apgd"
    assert diffpure == ["pgd-ce", "apgd-ce", "apgd-dlr", "pgd-margin", "bpda", "blind", "forward-only", *explicit]
    assert agdm == [*diffpure[:7], "aux-ce", "aux-margin", "joint", "pgd-detach", *explicit]
    assert (by_name["pgd-ce"].steps, by_name["pgd-ce"].eot, by_name["pgd-ce"].grad) == (3, 2, "full")
    assert by_name["bpda"].grad == "bpda" and by_name["pgd-detach"].variant == "detach"
    assert by_name["pgd-margin"].cascade and by_name["pgd-ce"].step_size == pytest.approx(0.15 / 4)
    assert cfg.ensemble == "default 3x2+pgd-full+pgd-bpda"


def test_traits_by_name_match_the_built_defences():
    """The default ensemble is chosen from a method's name before models load: it must be what the built defence
    would get."""
    from fastpurify.attacks import default_attacks
    from fastpurify.evaluation.defences import build_defence, traits
    from fastpurify.zoo import digits, digits_aux

    models, aux = digits(), digits_aux()
    for name in ("none", "aux", "diffpure+aux", "diffpure", "agdm", "gdmp-mse", "multiround"):
        built = build_defence(name, models.diffusion, models.classifier, aux, t_star=5)
        assert [a.as_dict() for a in default_attacks(traits(name))] == \
            [a.as_dict() for a in default_attacks(built)], name
        t = traits(name)
        assert (t.randomized, t.aux is not None, sorted(t.variants), t.robust_classifier, t.forward_noise_known) == \
            (built.randomized, built.aux is not None, sorted(built.variants), built.robust_classifier,
             built.forward_noise_known), name


@pytest.mark.parametrize("override, message", [
    ("methods.0.name=\"diffpur\"", "unknown method 'diffpur'"),
    ("eps=-0.1", "eps must be >= 0"),
    ("n_reevals=0", "n_reevals (N) must be >= 1"),
    ("epsilon=0.1", "unknown field 'epsilon'"),
    ("data.nn=3", "unknown field 'data.nn'"),
    ("attacks.0.stepz=3", "unknown field 'attacks.0.stepz'"),
    ("dtype=\"fp8\"", "dtype must be one of"),
    ("dtype=\"fp16\"", "torso precision of loaded checkpoints"),
    ("device=\"tpu\"", "device"),
    ("grad=\"magic\"", "grad must be one of"),
    ("batch_size=0", "batch_size must be >= 1"),
    ("large_eps=0.1", "must exceed eps"),
    ("large_eps_n=-1", "large_eps and large_eps_n must be >= 0"),
    ("large_eps=0", None),                                 # the check switched off
    ("n_select=0", "n_select must be >= 1"),              # ProtocolConfig's unset is None: leave it out
    ("eot_chunk=0", "eot_chunk must be >= 1"),
    ("n_select=3", None),
    ("attacks.0.variant=\"\"", "leave the key out for no variant"),
    ("methods.0.attacks=[\"pgd-nope\"]", "are not in [[attacks]]"),
    ("methods.0.attacks=[\"pgd-bpda\"]", None),           # a method may run a part of the ensemble
    (["default_ensemble.use=true", "default_ensemble.eot=0"], "default_ensemble: need"),
    (["default_ensemble.use=true", "attacks.0.name=\"pgd-ce\""], "taken by the default ensemble"),
    ("eps=\"big\"", "eps: expected a number"),
    ("model.diffusion=\"/nonexistent/ckpt.pt\"", "does not exist"),
    ("data.dataset=\"cifar10\"", "data.path"),
    ("methods.2.label=\"none\"", "duplicate labels"),
    ("methods.2.label=\"a/b\"", "may not contain"),
    ("methods.1.t_star=5000", "outside [1, 1000]"),
    ("attacks.1.name=\"pgd-full\"", "duplicate names"),
    ("attacks.0.loss=\"hinge\"", "unknown loss 'hinge'"),
    ("attacks.0.loss=\"dlr\"", None),
    ("attacks.0.eot=0", "eot >= 1"),
    ("methods.0.name=\"agdm\"", "needs model.aux"),
    ("methods.1.name=\"ddpm\"", None),                      # a preset is a method
    (["attacks.0.grad=\"adjoint\"", "methods.1.name=\"ddpm\""], "use grad='full'"),  # adjoint is VP-SDE only
])
def test_bad_configs_fail_before_any_work(tmp_path, override, message):
    overrides = [override] if isinstance(override, str) else override
    if message is None:
        _cfg(tmp_path, *overrides)
        return
    with pytest.raises(ConfigError) as e:
        _cfg(tmp_path, *overrides)
    assert message in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()


def test_missing_config_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("eps = = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_set_overrides_parse_toml_values_and_dotted_keys():
    raw = {"methods": [{"name": "none"}, {"name": "diffpure"}], "data": {}}
    apply_override(raw, "methods.1.t_star=50")
    apply_override(raw, "data.ids=[3, 1]")
    apply_override(raw, "device=cuda:1")        # not TOML: taken as a string
    apply_override(raw, "model.diffusion=\"a b.pt\"")
    assert raw["methods"][1]["t_star"] == 50 and raw["data"]["ids"] == [3, 1]
    assert raw["device"] == "cuda:1" and raw["model"]["diffusion"] == "a b.pt"
    with pytest.raises(ConfigError, match="not an index"):
        apply_override(raw, "methods.5.t_star=1")
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_override(raw, "eps")


def test_changed_config_is_refused_naming_the_fields(tmp_path):
    cfg = _cfg(tmp_path)
    ensure_sweep_dir(cfg, manifest_lines([0, 1], [3, 4], str))
    ensure_sweep_dir(_cfg(tmp_path, "batch_size=2"), manifest_lines([0, 1], [3, 4], str))  # runtime field: fine
    with pytest.raises(ConfigError) as e:
        ensure_sweep_dir(_cfg(tmp_path, "eps=0.1", "attacks.1.steps=3"), manifest_lines([0, 1], [3, 4], str))
    # eps also moves both default step sizes (2.5·eps/steps): the resolved values are what is compared
    assert "changed: attacks.0.step_size, attacks.1.step_size, attacks.1.steps, eps." in str(e.value)


def test_changed_schema_is_refused_on_resume(tmp_path):
    """A directory written before the attack / protocol keys came from AttackSpec / ProtocolConfig (no 'schema' in
    its identity, variant "" and n_select 0 for unset) is refused, naming 'schema', never mixed."""
    cfg = _cfg(tmp_path)
    ensure_sweep_dir(cfg, manifest_lines([0, 1], [3, 4], str))
    stored = Path(cfg.out) / "config.json"
    old = json.loads(stored.read_text())
    del old["identity"]["schema"]
    old["config_id"] = "0" * 16
    stored.write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="changed: schema"):
        ensure_sweep_dir(cfg, manifest_lines([0, 1], [3, 4], str))


def test_sweep_attack_and_protocol_keys_are_the_spec_and_protocol_fields():
    """One definition: an [[attacks]] entry has AttackSpec's fields and defaults (grad None = the sweep's grad), the
    protocol keys ProtocolConfig's, and the sweep builds both without translating values."""
    import dataclasses

    from fastpurify.attacks import AttackSpec
    from fastpurify.evaluation.protocol import ProtocolConfig
    from fastpurify.evaluation.sweep import config as c

    spec = {f.name: f.default for f in dataclasses.fields(AttackSpec)}
    mine = {f.name: f.default for f in dataclasses.fields(c.AttackConfig)}
    assert mine == {**spec, "name": "", "grad": None}
    proto = {f.name: f.default for f in dataclasses.fields(ProtocolConfig)}
    sweep = {f.name: f.default for f in dataclasses.fields(c.SweepConfig)}
    assert {k: sweep[k] for k in c.PROTOCOL_KEYS} == {**{k: proto[k] for k in c.PROTOCOL_KEYS}, "eps": 0.0}
    a = c.AttackConfig(name="x", grad="bpda")
    assert a.to_spec() == AttackSpec("x", grad="bpda")
    assert c.SweepConfig(eps=0.1, n_select=3).protocol() == ProtocolConfig(eps=0.1, n_select=3)
    from fastpurify.evaluation.defences import BASELINES
    assert c.BASELINES is BASELINES


# ------------------------------------------------------------------------------------------------ data
def _cifar_dir(tmp_path, n=7):
    rng = np.random.RandomState(0)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    data = rng.randint(0, 256, (n, 3072)).astype(np.uint8)
    labels = rng.randint(0, 10, n).tolist()
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
                     b"filenames": [b"x.png"] * n}, f, protocol=2)
    return d, data, labels


def test_cifar10_pickle_batches(tmp_path):
    d, data, labels = _cifar_dir(tmp_path)
    ds = open_dataset(DataConfig(dataset="cifar10", path=str(d), split="test"))
    assert ds.size == 7 and ds.labels().tolist() == labels
    x = ds.images([5, 2])
    assert x.shape == (2, 3, 32, 32) and float(x.max()) <= 1
    np.testing.assert_array_equal((x[0] * 255).round().byte().numpy().reshape(-1), data[5])
    with pytest.raises(ConfigError, match="data_batch_1"):
        open_dataset(DataConfig(dataset="cifar10", path=str(d), split="train"))


def test_cifar10_unpickler_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ConfigError, match="refusing to load builtins.print"):
        read_cifar_batch(path)


def test_cifar10_npy(tmp_path):
    rng = np.random.RandomState(1)
    x = rng.randint(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(5) % 10)
    ds = open_dataset(DataConfig(dataset="cifar10", path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy")))
    img = ds.images([3])
    assert img.shape == (1, 3, 32, 32)
    np.testing.assert_array_equal((img[0] * 255).round().byte().permute(1, 2, 0).numpy(), x[3])
    xf = rng.rand(4, 3, 8, 8).astype(np.float32)
    np.save(tmp_path / "xf.npy", xf)
    with pytest.raises(ConfigError, match="do not match"):  # 4 images, 5 labels
        open_dataset(DataConfig(dataset="cifar10", path=str(tmp_path / "xf.npy"), labels=str(tmp_path / "y.npy")))
    np.save(tmp_path / "yf.npy", np.arange(4))
    ds = open_dataset(DataConfig(dataset="cifar10", path=str(tmp_path / "xf.npy"), labels=str(tmp_path / "yf.npy")))
    np.testing.assert_allclose(ds.images([1, 2]).numpy(), xf[1:3])


def test_imagefolder_res256crop224_and_id_list(tmp_path):
    from PIL import Image

    root = tmp_path / "val"
    rng = np.random.RandomState(2)
    for cls in ("n01440764", "n01443537"):
        (root / cls).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.randint(0, 256, (260, 300, 3)).astype(np.uint8)).save(root / cls / f"img{k}.png")
    ds = open_dataset(DataConfig(dataset="imagenet", path=str(root)))
    assert ds.size == 4 and ds.labels().tolist() == [0, 0, 1, 1]  # ImageNet-1k classes 0 and 1
    assert ds.images([2, 0]).shape == (2, 3, 224, 224)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# RobustBench style\nval/n01443537/img1.png\nn01440764/img0.png\n")
    d = DataConfig(dataset="imagenet", path=str(root), ids_file=str(ids_file))
    assert select_ids(d, ds) == [3, 0] and ds.source(3) == "n01443537/img1.png"
    ids_file.write_text("n01440764/img9.png\n")
    with pytest.raises(ConfigError, match="not an image of"):
        select_ids(d, ds)


def test_subsets_and_ids():
    ds = open_dataset(DataConfig(dataset="digits", split="val"))
    assert ds.size == 180
    assert select_ids(DataConfig(n=4), open_dataset(DataConfig())) == [0, 1, 2, 3]
    seeded = select_ids(DataConfig(subset="seeded", n=5, data_seed=3), ds)
    assert seeded == sorted(seeded) and len(set(seeded)) == 5
    assert seeded == select_ids(DataConfig(subset="seeded", n=5, data_seed=3), ds)  # fixed subset
    assert seeded != select_ids(DataConfig(subset="seeded", n=5, data_seed=4), ds)
    with pytest.raises(ConfigError, match="outside"):
        select_ids(DataConfig(ids=[3, 180]), ds)


# ------------------------------------------------------------------------------------------------ shards
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("torchrun", [True, False])
def test_shards_are_disjoint_unpadded_and_cover_the_pending_pairs(world, torchrun):
    ids = [7, 3, 11, 2, 9, 4, 1]
    methods = ["a", "b"]
    done = {("a", 3), ("b", 3), ("a", 2), ("b", 9)}
    parts = [my_work(ids, methods, done, DistEnv(r, world, r, torchrun)) for r in range(world)]
    flat = [p for part in parts for p in part]
    assert len(flat) == len(set(flat))
    assert set(flat) == {(m, i) for m in methods for i in ids} - done
    if torchrun:  # slices of the pending ids: sizes differ by at most one id
        n_ids = [len({i for _, i in part}) for part in parts]
        assert max(n_ids) - min(n_ids) <= 1
    for part in parts:
        bs = batches(part, 2)
        assert [(m, i) for m, b in bs for i in b] == part and all(1 <= len(b) <= 2 for _, b in bs)


def test_manifest_sha256_over_ordered_ids():
    assert manifest_sha256([1, 2]) != manifest_sha256([2, 1])
    assert manifest_sha256([1, 2]) == manifest_sha256([1, 2])


# ------------------------------------------------------------------------------------------------ records
def _outcome(i: int, n: int = 3, correct: bool = True) -> dict:
    label = i % 10
    adv = [label if correct else (label + 1) % 10] * n
    c = [int(correct)] * n
    return {"clean_preds": [label] * n, "clean_correct": [1] * n, "adv_preds": adv, "adv_correct": c,
            "attacks": {"pgd-full": {"preds": adv, "correct": c, "sel_acc": float(correct), "sel_margin": 0.5},
                        "pgd-bpda": {"preds": [label] * n, "correct": [1] * n, "sel_acc": 1.0, "sel_margin": 0.7}},
            "winner": "pgd-full", "margin": 0.5, "linf": 0.1, "l2": 1.0, "nfe_defense": 10,
            "nfe_attack": 100, "nfe_eval": 40, "ensemble_run": ["pgd-full", "pgd-bpda"]}


def _fake_sweep(tmp_path, n=6, write=None):
    """A sweep directory with config + manifest and records written by RecordWriter, no model run."""
    cfg = _cfg(tmp_path, f"data.n={n}", "methods=[{name=\"none\"}, {name=\"diffpure\"}]", "n_reevals=3")
    ids = list(range(n))
    ensure_sweep_dir(cfg, manifest_lines(ids, [i % 10 for i in ids], lambda i: f"digits/test[{i}]"))
    common = {"config_id": config_id(cfg), "manifest_sha256": manifest_sha256(ids), "protocol": "test",
              "dtype": "fp32", "backend": "auto", "gpu": None, "versions": {"torch": "x"}, "seeds": {"run": 0},
              "t_star_steps": None, "t_star_s": None, "wall_s": 0.01, "adv_path": None}
    for rank, pairs in (write or {0: [(m, i) for m in ("none", "diffpure") for i in ids]}).items():
        w = RecordWriter(cfg.out, rank)
        w.write([{**common, **_outcome(i, correct=i % 2 == 0), "sample_id": i, "label": i % 10, "method": m}
                 for m, i in pairs])
        w.finish({})
    return cfg


def test_partial_last_line_is_ignored_and_the_sample_redone(tmp_path):
    cfg = _fake_sweep(tmp_path, n=4)
    shard = Path(cfg.out) / "records" / "shard-r0-a0.jsonl"
    text = shard.read_bytes()
    shard.write_bytes(text[: len(text) - 40])  # cut the last line
    (s,) = read_shards(cfg.out)
    assert s.partial_tail and len(s.records) == 7
    mg = merge(cfg.out)
    assert mg.missing == {"none": [], "diffpure": [3]}
    assert "partial last line (crash" in status(cfg.out)
    with pytest.raises(IncompleteSweep, match="diffpure: 1 of 4 missing: 3"):
        write_report(cfg.out)
    done = {(r["method"], r["sample_id"]) for r in s.records}
    assert my_work(mg.ids, mg.methods, done, DistEnv(0, 1, 0, False)) == [("diffpure", 3)]


def test_record_writer_opens_a_new_attempt_each_time(tmp_path):
    a, b = RecordWriter(tmp_path, 2), RecordWriter(tmp_path, 2)
    assert (a.attempt, b.attempt) == (0, 1) and a.path != b.path
    assert RecordWriter(tmp_path, 0).attempt == 0


def test_same_outcome_ignores_cost_and_placement_fields():
    a = {**_outcome(1), "rank": 0, "wall_s": 1.0, "timestamp": 5}
    assert same_outcome(a, {**a, "rank": 3, "wall_s": 9.0, "attempt": 4})
    assert same_outcome(a, {**a, "margin": 0.5 + 1e-6})
    assert not same_outcome(a, {**a, "adv_preds": [0, 0, 0]})
    assert not same_outcome(a, {**a, "margin": 0.6})


# ------------------------------------------------------------------------------------------------ report
def test_wilson_and_accuracies():
    assert wilson_ci(0.5, 100) == [0.4038, 0.5962]
    assert wilson_ci(0.0, 10)[0] == 0.0 and wilson_ci(1.0, 10)[1] == 1.0
    acc = accuracies([[1, 2, 2], [3, 4, 3], [5, 6, 7]], [2, 3, 5])
    assert acc["mean"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3, abs=1e-6) and acc["n"] == 3
    assert acc["worst"] == 0.0
    assert acc["majority"] == pytest.approx(2 / 3, abs=1e-6)  # a 3-way tie (5, 6, 7) is not robust


def test_report_complete_idempotent_and_robustbench_fields(tmp_path):
    cfg = _fake_sweep(tmp_path)
    rep = write_report(cfg.out)
    files = {p.name: p.read_bytes() for p in (Path(cfg.out) / "report").iterdir()}
    write_report(cfg.out)
    assert files == {p.name: p.read_bytes() for p in (Path(cfg.out) / "report").iterdir()}
    r = rep["results"][1]
    for key in ("clean_acc", "autoattack_acc", "external", "number_forward_passes", "footnote", "unreliable",
                "protocol", "n_examples", "n_reevals", "avg_rob", "wor_rob", "maj_rob", "ci95", "grad_mode", "eot",
                "t_star_steps", "t_star_s", "nfe_defense", "nfe_attack", "dtype", "backend", "seeds",
                "manifest_sha256", "versions", "gpu"):
        assert key in r, key
    assert r["clean_acc"] == "100.00" and r["autoattack_acc"] == "50.00" and r["avg_rob"] == 0.5
    assert "NOT AutoAttack" in r["autoattack_acc_is"] and r["unreliable"] is False
    assert rep["status"] == "COMPLETE" and "PARTIAL" not in (Path(cfg.out) / "report" / "report.md").read_text()


def test_incomplete_report_needs_partial_and_is_marked(tmp_path):
    ids = range(6)
    cfg = _fake_sweep(tmp_path, write={0: [("none", i) for i in ids] + [("diffpure", i) for i in (0, 2, 4)]})
    with pytest.raises(IncompleteSweep, match="diffpure: 3 of 6 missing: 1, 3, 5"):
        write_report(cfg.out)
    rep = write_report(cfg.out, partial=True)
    assert rep["status"] == "PARTIAL" and rep["results"][1]["unreliable"] is True
    assert (Path(cfg.out) / "report" / "report.md").read_text().startswith("# PARTIAL")


def test_duplicates_are_counted_and_named_never_merged_silently(tmp_path, capsys):
    """Identical duplicates (two runs on one directory): the report uses the first record of each but names every
    pair with its records, says so at the top of report.md, and `sweep report` exits non-zero; differing ones stop
    the report."""
    from fastpurify.evaluation.sweep import main

    pairs = [(m, i) for m in ("none", "diffpure") for i in range(6)]
    cfg = _fake_sweep(tmp_path, write={0: pairs, 1: pairs[:3]})
    mg = merge(cfg.out)
    assert mg.complete and mg.duplicates["none"] == [0, 1, 2]
    rep = write_report(cfg.out)
    assert rep["results"][0]["n_examples"] == 6 and rep["completeness"]["none"]["duplicates"] == 3
    assert rep["duplicates"][0] == {"method": "none", "sample_id": 0,
                                    "records": ["shard-r0-a0.jsonl:1", "shard-r1-a0.jsonl:1"]}
    md = (Path(cfg.out) / "report" / "report.md").read_text()
    assert "**DUPLICATES: 3 (method, image) pairs" in md.split("| method")[0]
    assert "- none image 2: shard-r0-a0.jsonl:3, shard-r1-a0.jsonl:3" in md
    assert main(["report", cfg.out]) == 1 and "recorded more than once" in capsys.readouterr().err
    assert "DUPLICATES none: 3 ids" in status(cfg.out)
    # A second record of (none, 4) with another outcome: a conflict, the report stops and names both lines.
    w = RecordWriter(cfg.out, 5)
    first = merge(cfg.out).rows["none"][4]
    w.write([{**first, "adv_preds": [9, 9, 9], "adv_correct": [0, 0, 0]}])
    w.finish({})
    with pytest.raises(IncompleteSweep, match="CONFLICT none id 4: shard-r0-a0.jsonl:5 and shard-r5-a0.jsonl:1"):
        write_report(cfg.out)


# ------------------------------------------------------------------------------------------------ command line
def test_cli_errors_before_work_and_report_exit_codes(tmp_path, capsys):
    from fastpurify.cli import main

    out = tmp_path / "out"
    assert main(["sweep", str(EXAMPLE), "--set", f"out={json.dumps(str(out))}", "--set", "data.ids=[3, 360]"]) == 2
    assert "ids [360] are outside 0..359 of digits/test" in capsys.readouterr().err and not out.exists()
    assert main(["sweep", "check", str(EXAMPLE), "--set", "n_reevals=0"]) == 2
    assert "n_reevals (N) must be >= 1" in capsys.readouterr().err
    cfg = _fake_sweep(tmp_path, write={0: [("none", i) for i in range(6)]})
    assert main(["sweep", "status", cfg.out]) == 0
    assert "diffpure                       0        6" in capsys.readouterr().out
    assert main(["sweep", "report", cfg.out]) == 1
    assert "diffpure: 6 of 6 missing" in capsys.readouterr().err
    assert main(["sweep", "report", cfg.out, "--partial"]) == 0
    assert capsys.readouterr().out.startswith("# PARTIAL — Sweep")


def test_settings_the_build_rejects_fail_before_any_work_in_sweep_check_sweep_and_compare(tmp_path, capsys,
                                                                                         monkeypatch):
    """One validation (settings_problems): sampler steps beyond t* fail as one line, rc 2, at `sweep check` and
    `sweep` (no traceback, nothing written), and `compare` raises before loading a model."""
    from fastpurify.evaluation import compare
    from fastpurify.evaluation.sweep import main

    bad = ["--set", f"out={json.dumps(str(tmp_path / 'out'))}", "--set", 'methods=[{name="ddim", t_star=5, steps=10}]']
    for cmd in (["check"], []):
        assert main([*cmd, str(EXAMPLE), *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("error:") == 1 and "steps = 10 exceeds t* = 5" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    monkeypatch.setitem(compare.BUDGET, "agdm", ({**compare.DIGITS["agdm"], "steps": 50}, 20))
    monkeypatch.setattr("fastpurify.zoo.digits", lambda: pytest.fail("a model was loaded before validation"))
    with pytest.raises(ValueError, match="agdm: steps = 50 exceeds t\\* = 20"):
        compare.run_compare(tmp_path / "cmp", methods=("agdm",))


def test_resize_wraps_the_attack_side_variants_too(tmp_path):
    """Data of another size than the diffusion model's: the defence's purifier and its attack-side variants (AGDM's
    'detach') are resized alike, so a variant attack purifies the same images as the defence."""
    import torch

    from fastpurify.evaluation.sweep.build import Models, build_defence
    from fastpurify.methods import ResizePurifier
    from fastpurify.zoo import digits, digits_aux

    z = digits()
    models = Models(z.diffusion, z.classifier, digits_aux(), torch.float32, torch.device("cpu"))
    cfg = _cfg(tmp_path, 'model.aux="digits"', 'methods=[{name="agdm", t_star=5}]')
    d = build_defence(cfg.methods[0], models, cfg, image_size=12)
    assert isinstance(d.purifier, ResizePurifier) and set(d.variants) == {"detach"}
    assert all(isinstance(v, ResizePurifier) and v.size == 16 for v in d.variants.values())
    x = torch.rand(1, 1, 12, 12)
    assert d.variants["detach"](x, seed=torch.tensor([0])).shape == (1, 1, 12, 12)


def test_docs_sweeps_lists_every_config_key():
    """docs/SWEEPS.md is the config reference: every key of every table is in it, as a table row."""
    import dataclasses

    from fastpurify.evaluation.sweep import config as c

    text = (Path(__file__).resolve().parent.parent / "docs/SWEEPS.md").read_text()
    for cls in (c.SweepConfig, c.DataConfig, c.ModelConfig, c.MethodConfig, c.AttackConfig, c.DefaultEnsembleConfig):
        for f in dataclasses.fields(cls):
            if not dataclasses.is_dataclass(f.type) and f.name not in ("data", "model", "methods", "attacks",
                                                                        "default_ensemble"):
                assert f"| `{f.name}` |" in text, f"{cls.__name__}.{f.name} is not in docs/SWEEPS.md"


def test_a_failed_convergence_check_names_the_rerun_that_doubles_the_steps():
    from fastpurify.evaluation.sweep.report import _escalation

    rep = {"ensemble": {"attacks": [{"name": "pgd-full", "steps": 10}, {"name": "x", "steps": 5}]},
           "default_ensemble": {"use": False, "steps": 20},
           "results": [{"method": "ddim@20", "checks": [{"name": "pgd-full_converged", "passed": False},
                                                        {"name": "x_converged", "passed": True}]}]}
    text = "\n".join(_escalation(rep))
    assert "ddim@20: pgd-full has not converged at 10 steps" in text and "`--set attacks.0.steps=20`" in text
    assert "x has not" not in text
    rep["default_ensemble"] = {"use": True, "steps": 10}
    assert "`--set default_ensemble.steps=20`" in "\n".join(_escalation(rep))
    rep["results"][0]["checks"][0]["passed"] = True
    assert _escalation(rep) == []
