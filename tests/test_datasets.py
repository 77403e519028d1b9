"""The sweep's datasets on stand-ins in the real formats: the ImageNet-1k class order and labels of any subset of
synset folders, CIFAR-100's pickles (fine / coarse labels), and refusals of selections that would silently be
something else."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest

from fastpurify.evaluation.sweep.config import ConfigError, DataConfig
from fastpurify.evaluation.sweep.data import imagenet_synsets, open_dataset, select_ids

# sha256 of the 1000 ids, one per line, each ending in a newline (timm 1.0.31's imagenet_synsets.txt)
SYNSETS_SHA256 = "70002b0ff5de60a3a17a82dbfcff291931f96225ddf941ad2e182fc39e183d15"
CHIHUAHUA, RACER = "n02085620", "n04037443"


def test_imagenet_1k_synsets_in_class_index_order():
    ids = imagenet_synsets()
    assert len(ids) == 1000 and len(set(ids)) == 1000
    assert ids[0] == "n01440764" and ids[151] == CHIHUAHUA and ids[751] == RACER and ids[999] == "n15075141"
    assert hashlib.sha256("".join(f"{w}\n" for w in ids).encode()).hexdigest() == SYNSETS_SHA256


def _tree(root, folders, n=2, size=(256, 256)):
    from PIL import Image

    rng = np.random.RandomState(0)
    for c in folders:
        (root / c).mkdir(parents=True)
        for k in range(n):
            Image.fromarray(rng.randint(0, 256, (*size, 3)).astype(np.uint8)).save(root / c / f"ILSVRC_{k}.JPEG")
    return root


def test_imagefolder_labels_are_imagenet_indices_not_folder_positions(tmp_path):
    root = _tree(tmp_path / "val", [CHIHUAHUA, RACER])
    ds = open_dataset(DataConfig(dataset="imagenet", path=str(root)))
    assert ds.labels().tolist() == [151, 151, 751, 751]  # not 0, 0, 1, 1
    assert ds.n_classes == 1000 and "ImageNet-1k class index" in ds.label_rule
    assert ds.images([0]).shape == (1, 3, 224, 224)


def test_imagefolder_refuses_folders_that_are_not_synsets_unless_mapped(tmp_path):
    root = _tree(tmp_path / "val", ["cats", CHIHUAHUA], n=1)
    with pytest.raises(ConfigError, match="cats.*not in the ImageNet-1k synsets"):
        open_dataset(DataConfig(dataset="imagenet", path=str(root)))
    cmap = tmp_path / "map.txt"
    cmap.write_text(f"# folder index\ncats 3\n{CHIHUAHUA} 151\n")
    ds = open_dataset(DataConfig(dataset="imagenet", path=str(root), class_map=str(cmap)))
    assert ds.labels().tolist() == [3, 151] and ds.n_classes is None


def _cifar100(dirpath, n=12, seed=0):
    """A stand-in cifar-100-python/test: the real layout (a dict with bytes keys, uint8 rows of 3072)."""
    rng = np.random.RandomState(seed)
    fine = rng.randint(0, 100, n).tolist()
    coarse = [f // 5 for f in fine]
    d = {b"filenames": [f"img{i}.png".encode() for i in range(n)], b"batch_label": b"testing batch 1 of 1",
         b"fine_labels": fine, b"coarse_labels": coarse,
         b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8)}
    dirpath.mkdir(parents=True, exist_ok=True)
    with open(dirpath / "test", "wb") as f:
        pickle.dump(d, f, protocol=2)
    return d


def test_cifar100_pickle_reads_fine_labels_by_default_and_coarse_on_request(tmp_path):
    raw = _cifar100(tmp_path / "cifar-100-python")
    ds = open_dataset(DataConfig(dataset="cifar100", path=str(tmp_path / "cifar-100-python")))
    assert ds.labels().tolist() == raw[b"fine_labels"] and ds.n_classes == 100 and "fine" in ds.label_rule
    x = ds.images([3])
    np.testing.assert_allclose(x.numpy().reshape(-1), raw[b"data"][3] / 255.0, atol=1e-7)
    coarse = open_dataset(DataConfig(dataset="cifar100", path=str(tmp_path / "cifar-100-python"),
                                     label_type="coarse"))
    assert coarse.labels().tolist() == raw[b"coarse_labels"] and coarse.n_classes == 20
    with pytest.raises(ConfigError, match="no cifar-100-python file 'train'"):
        open_dataset(DataConfig(dataset="cifar100", path=str(tmp_path / "cifar-100-python"), split="train"))


def test_cifar100_npy(tmp_path):
    x = np.random.RandomState(1).randint(0, 256, (5, 32, 32, 3)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x), np.save(tmp_path / "y.npy", np.array([0, 99, 5, 42, 7]))
    ds = open_dataset(DataConfig(dataset="cifar100", path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy"),
                                 label_type="fine"))
    assert ds.labels().tolist() == [0, 99, 5, 42, 7] and ds.images([1]).shape == (1, 3, 32, 32)
    np.save(tmp_path / "y.npy", np.array([0, 100, 5, 42, 7]))
    with pytest.raises(ConfigError, match="outside the 100 classes"):
        open_dataset(DataConfig(dataset="cifar100", path=str(tmp_path / "x.npy"), labels=str(tmp_path / "y.npy")))


def test_n_beyond_the_split_is_refused_whatever_the_subset_rule(tmp_path):
    ds = open_dataset(DataConfig(dataset="digits", split="val"))
    for subset in ("first", "seeded"):
        with pytest.raises(ConfigError, match="data.n = 181 exceeds the 180 images"):
            select_ids(DataConfig(n=181, subset=subset), ds)
    assert len(select_ids(DataConfig(n=180), ds)) == 180
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("1\n2\n")
    with pytest.raises(ConfigError, match="exceeds the 2 ids"):
        select_ids(DataConfig(n=3, ids_file=str(ids_file)), ds)


def test_default_split_is_the_datasets_evaluation_split(tmp_path):
    from fastpurify.evaluation.sweep.config import SweepConfig
    from fastpurify.evaluation.sweep.plan import resolve_defaults

    for dataset, split in (("imagenet", "val"), ("cifar100", "test"), ("digits", "test")):
        cfg = resolve_defaults(SweepConfig(data=DataConfig(dataset=dataset)), base=tmp_path)
        assert cfg.data.split == split
    assert resolve_defaults(SweepConfig(data=DataConfig(dataset="cifar100")), base=tmp_path).data.label_type == "fine"
