"""The sweep's datasets on stand-ins in the real formats: the ImageNet-1k class order and labels of any subset of
synset folders, CIFAR-100's pickles (fine / coarse labels), and refusals of selections that would silently be
something else."""

from __future__ import annotations

import hashlib
import json
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


# ------------------------------------------------------------------------------------------------ sweep check
# Stand-ins: random weights at small widths, in the public files' layouts; the configuration a file does not hold
# (the ADM head width) is given in [model], as a user would.
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
ADM_256 = dict(image_size=256, model_channels=32, num_res_blocks=1, attention_resolutions=(32, 16, 8),
               channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64)   # the public model's layout, 1/8 wide
ADM_64 = dict(image_size=64, model_channels=32, num_res_blocks=1, attention_resolutions=(16,),
              channel_mult=(1, 2, 3, 4), num_head_channels=32)


@pytest.fixture(scope="module")
def standins(tmp_path_factory):
    import torch
    import torchvision

    from fastpurify.models.adm import ADMUNet
    from fastpurify.models.classifiers import DMWideResNet
    from fastpurify.models.ddpm_model import DDPMModel

    d = tmp_path_factory.mktemp("standins")
    torch.manual_seed(0)
    torch.save(ADMUNet(**ADM_256).state_dict(), d / "adm256.pt")
    torch.save(ADMUNet(**ADM_64).state_dict(), d / "adm64.pt")
    torch.save(torchvision.models.resnet50().state_dict(), d / "resnet50.pth")
    torch.save(DDPMModel(resolution=32, ch=32, ch_mult=(1, 2, 2, 2), num_res_blocks=1, attn_resolutions=(16,))
               .state_dict(), d / "ddpm100.ckpt")
    torch.save({"state_dict": DMWideResNet(depth=10, width=1, num_classes=100).state_dict()}, d / "c100.pt")
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, d / "unknown.pt")
    (d / "notes.pt").write_text("not a checkpoint")
    _tree(d / "val", [CHIHUAHUA, RACER], n=1)
    (d / "ids.txt").write_text(f"val/{RACER}/ILSVRC_0.JPEG\n{CHIHUAHUA}/ILSVRC_0.JPEG\n")
    _cifar100(d / "cifar-100-python", n=500)
    return d


def _check(capsys, example, *sets):
    from fastpurify.evaluation.sweep import main

    args = ["check", str(ROOT / "examples" / example), "--set", 'out="/tmp/unused-sweep-out"']
    for s in sets:
        args += ["--set", s]
    rc = main(args)
    return rc, capsys.readouterr()


def _imagenet(d, **over):
    sets = {"data.path": d / "val", "data.ids_file": d / "ids.txt", "model.diffusion": d / "adm256.pt",
            "model.classifier": d / "resnet50.pth", "device": "cpu", "dtype": "fp32"}  # CPU-only test machine
    sets.update(over)
    return [f"{k}={json.dumps(v if isinstance(v, (bool, int)) else str(v))}" for k, v in sets.items()]


def test_each_example_config_passes_check_on_standins(standins, capsys):
    d = standins
    rc, out = _check(capsys, "sweep_imagenet.toml", *_imagenet(d))
    assert rc == 0, out.err
    assert "resized 224 → 256 → 224" in out.err and f"{CHIHUAHUA} → 151" in out.err and f"{RACER} → 751" in out.err
    rc, out = _check(capsys, "sweep_cifar100.toml", f'data.path="{d / "cifar-100-python"}"',
                     f'model.diffusion="{d / "ddpm100.ckpt"}"', f'model.classifier="{d / "c100.pt"}"')
    assert rc == 0, out.err
    assert "CIFAR-100 fine label" in out.err


def _one_line_rc2(rc, out, *words):
    lines = [s for s in out.err.splitlines() if s.startswith("fastpurify sweep: error:")]
    assert rc == 2 and "Traceback" not in out.err + out.out and len(lines) == 1, out.err
    for w in words:
        assert w in lines[0], lines[0]


def test_a_smaller_diffusion_model_than_the_data_is_refused_unless_asked(standins, capsys):
    d = standins
    over = _imagenet(d, **{"model.diffusion": d / "adm64.pt", "model.diffusion_config.num_head_channels": 32,
                           "model.diffusion_config.image_size": 64})
    rc, out = _check(capsys, "sweep_imagenet.toml", *over)
    _one_line_rc2(rc, out, "64×64 model on 224×224 data", "model.allow_downsample = true")
    rc, out = _check(capsys, "sweep_imagenet.toml", *over, "model.allow_downsample=true")
    assert rc == 0, out.err


def test_each_wrong_checkpoint_is_one_line_rc_2(standins, capsys):
    d = standins
    cases = [
        ({"model.diffusion_config": "{image_size = 256}"}, ["num_head_channels is not in the checkpoint",
                                                             "[model.diffusion_config]"]),
        ({"model.classifier": d / "unknown.pt"}, ["model.classifier", "supported kinds: wrn, dm-wrn, resnet50"]),
        ({"model.classifier": d / "adm256.pt"}, ["model.classifier", "'adm' diffusion model, not a classifier"]),
        ({"model.classifier": d / "notes.pt"}, ["model.classifier", "not a PyTorch checkpoint"]),
        ({"model.diffusion": d / "resnet50.pth", "model.diffusion_kind": ""},
         ["model.diffusion", "'resnet50' classifier, not a diffusion model"]),
        ({"model.diffusion": d / "ddpm100.ckpt", "model.diffusion_kind": "ddpm",
          "model.diffusion_config": "{resolution = 32}"}, ["32×32 model on 224×224 data"]),  # CIFAR-size on ImageNet
        ({"model.diffusion_config": "{num_head_channels = 64}"}, ["image_size is not in the checkpoint"]),
    ]
    for over, words in cases:
        sets = [s for s in _imagenet(d, **over) if not s.startswith("model.diffusion_config=")]
        if "model.diffusion_config" in over:  # the table itself replaced (TOML syntax)
            sets.append(f"model.diffusion_config={over['model.diffusion_config']}")
        rc, out = _check(capsys, "sweep_imagenet.toml", *sets)
        _one_line_rc2(rc, out, *words)


def test_adm_whose_image_size_cannot_be_inferred_names_the_config_table(standins, tmp_path, capsys):
    import torch

    from fastpurify.models.adm import ADMUNet

    torch.save(ADMUNet(image_size=32, model_channels=32, num_res_blocks=1, attention_resolutions=(16,),
                       channel_mult=(1, 2), num_head_channels=32).state_dict(), tmp_path / "adm32.pt")
    over = [*_imagenet(standins, **{"model.diffusion": tmp_path / "adm32.pt"}),
            "model.diffusion_config={num_head_channels = 32}"]  # and no image size
    rc, out = _check(capsys, "sweep_imagenet.toml", *over)
    _one_line_rc2(rc, out, "does not determine the image size", "[model.diffusion_config] image_size")


def test_a_classifier_with_other_classes_than_the_data_is_one_line(standins, tmp_path, capsys):
    import torch

    from fastpurify.models.classifiers import DMWideResNet

    torch.save(DMWideResNet(depth=10, width=1, num_classes=10).state_dict(), tmp_path / "c10.pt")
    rc, out = _check(capsys, "sweep_cifar100.toml", f'data.path="{standins / "cifar-100-python"}"',
                     f'model.diffusion="{standins / "ddpm100.ckpt"}"', f'model.classifier="{tmp_path / "c10.pt"}"')
    _one_line_rc2(rc, out, "returns (1, 10) logits; cifar100/test has 100 classes")


def test_grey_images_for_colour_models_are_a_line_not_a_traceback(standins, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((4, 32, 32, 1), np.uint8)), np.save(tmp_path / "y.npy", np.arange(4))
    rc, out = _check(capsys, "sweep_cifar100.toml", f'data.path="{tmp_path / "x.npy"}"',
                     f'data.labels="{tmp_path / "y.npy"}"', "data.n=4",
                     f'model.diffusion="{standins / "ddpm100.ckpt"}"', f'model.classifier="{standins / "c100.pt"}"')
    _one_line_rc2(rc, out, "1×32×32 but the diffusion model takes square 3-channel")
