"""load_diffusion / load_classifier on same-architecture random weights saved in each original on-disk layout:
round trips, format detection, config inference, clear errors, and the never-unpickle-code rule."""

import pytest
import torch

import fastpurify
from fastpurify.models import CheckpointError, PretrainedDiffusion, load_classifier, load_diffusion, save_pretrained
from fastpurify.models.loaders import detect_kind, read_file
from tests.model_helpers import (TINY_ADM, TINY_DDPM, TINY_DIFFUSERS, TINY_NCSNPP, save_diffusers_dir,
                                 save_score_sde, save_state_dict, tiny, tiny_classifier)

SIZES = {"ncsnpp": 8, "adm": 16, "ddpm": 8, "diffusers": 8}


def _io(kind, batch=2):
    g = torch.Generator().manual_seed(3)
    size = SIZES[kind]
    return torch.randn(batch, 3, size, size, generator=g), torch.tensor([7.0, 420.0][:batch])


def _same_output(loaded: PretrainedDiffusion, net, kind):
    x, t = _io(kind)
    with torch.no_grad():
        want, got = net(x, t), loaded.output(x, t)
    assert torch.equal(got, want), f"{kind}: max diff {(got - want).abs().max():.3e}"
    return got


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    ema, raw = tiny("ncsnpp", seed=0), tiny("ncsnpp", seed=1)  # EMA and raw weights differ, as in a real run
    nets = {"ncsnpp": ema, "ncsnpp-raw": raw, "adm": tiny("adm"), "ddpm": tiny("ddpm"), "diffusers": tiny("diffusers")}
    paths = {"score_sde": save_score_sde(ema, d / "checkpoint_8.pth", raw=raw),
             "adm": save_state_dict(nets["adm"], d / "256x256_diffusion_uncond.pt"),
             "ddpm": save_state_dict(nets["ddpm"], d / "model-790000.ckpt"),
             "diffusers": save_diffusers_dir(nets["diffusers"], TINY_DIFFUSERS, d / "ddpm-cifar10-32"),
             "diffusers-legacy": save_diffusers_dir(nets["diffusers"], TINY_DIFFUSERS, d / "legacy", legacy=True)}
    torch.save([{f"module.{k}": v for k, v in nets["ddpm"].state_dict().items()}, {"epoch": 3}], d / "leekim.pth")
    paths["ddpm-leekim"] = d / "leekim.pth"
    return d, nets, paths


def test_score_sde_checkpoint_loads_the_positional_ema_weights(files):
    d, nets, paths = files
    obj = torch.load(paths["score_sde"], weights_only=True)
    assert list(obj["model"])[:2] == ["module.sigmas", "module.all_modules.0.weight"]  # the original nesting
    m = fastpurify.load_diffusion(paths["score_sde"], image_size=8)
    assert isinstance(m, PretrainedDiffusion) and m.meta["kind"] == "score_sde" and m.time_input == "continuous"
    assert m.net.config == {**TINY_NCSNPP}  # inferred from the named 'model' keys (image_size given)
    assert m.meta["ema"] and m.meta["ema_decay"] == 0.9999 and m.meta["model_key_order_matches"] is True
    assert m.meta["tensors"] == len(obj["ema"]["shadow_params"]) and not m.training
    _same_output(m, nets["ncsnpp"], "ncsnpp")
    # ema=False loads the raw 'model' weights instead (DiffPure's strict=False load of 'model' matches nothing).
    _same_output(load_diffusion(paths["score_sde"], image_size=8, ema=False), nets["ncsnpp-raw"], "ncsnpp")


@pytest.mark.parametrize("kind, key", [("adm", "adm"), ("ddpm", "ddpm"), ("ddpm", "ddpm-leekim"),
                                       ("diffusers", "diffusers"), ("diffusers", "diffusers-legacy")])
def test_round_trip_is_exact(files, kind, key):
    d, nets, paths = files
    extra = {"adm": dict(image_size=16, num_head_channels=16), "ddpm": dict(resolution=8)}.get(kind, {})
    m = load_diffusion(paths[key], **extra)
    assert m.meta["kind"] == kind and m.time_input == "index"
    assert m.meta["params"] == sum(p.numel() for p in nets[kind].parameters())
    assert len(m.meta["sha256"]) == 64
    out = _same_output(m, nets[kind], kind)
    x, t = _io(kind)
    with torch.no_grad():
        assert torch.equal(m(x, t), out[:, :3])  # ε = the first 3 channels (ADM: learned σ in [3:])


def test_configs_are_inferred_from_the_keys(files):
    d, nets, paths = files
    assert load_diffusion(paths["adm"], image_size=16, num_head_channels=16).net.config == {**TINY_ADM}
    assert load_diffusion(paths["ddpm"], resolution=8).net.config == {**TINY_DDPM}
    m = load_diffusion(paths["adm"], image_size=16, num_head_channels=16)
    assert m.meta["output"].startswith("eps[:3] + learned variance") and m.index_at_time == "floor"


def test_named_format_round_trip(files, tmp_path):
    """save_pretrained turns the positional score_sde file into a named one; it reloads to the same outputs."""
    d, nets, paths = files
    m = load_diffusion(paths["score_sde"], image_size=8)
    p = save_pretrained(m, tmp_path / "ncsnpp.safetensors")
    m2 = load_diffusion(p)
    assert m2.meta["kind"] == "ncsnpp" and m2.image_size == 8
    _same_output(m2, nets["ncsnpp"], "ncsnpp")
    p = save_pretrained(load_diffusion(paths["diffusers"]), tmp_path / "unet.safetensors")
    _same_output(load_diffusion(p), nets["diffusers"], "diffusers")


def test_detection_and_kind_mismatch(files):
    d, nets, paths = files
    assert detect_kind(read_file(paths["score_sde"])[0]) == "score_sde"
    assert detect_kind(read_file(paths["adm"])[0]) == "adm"
    assert detect_kind(read_file(paths["ddpm-leekim"])[0]) == "ddpm"
    with pytest.raises(CheckpointError, match="looks like a 'adm' checkpoint, not 'ddpm'"):
        load_diffusion(paths["adm"], kind="ddpm")
    with pytest.raises(ValueError, match="kind must be one of"):
        load_diffusion(paths["adm"], kind="unet")


def test_missing_unexpected_and_misshapen_keys_are_named(files, tmp_path):
    d, nets, paths = files
    sd = dict(nets["ddpm"].state_dict())
    sd.pop("mid.attn_1.q.weight")
    sd["mid.extra.weight"] = torch.zeros(1)
    sd["conv_out.bias"] = torch.zeros(4)
    torch.save(sd, tmp_path / "bad.ckpt")
    with pytest.raises(CheckpointError) as e:
        load_diffusion(tmp_path / "bad.ckpt", resolution=8)
    msg = str(e.value)
    assert "1 missing keys: mid.attn_1.q.weight" in msg and "1 unexpected keys: mid.extra.weight" in msg
    assert "conv_out.bias: file (4,) vs model (3,)" in msg


def test_score_sde_ema_length_and_shape_mismatch(files, tmp_path):
    d, nets, paths = files
    obj = torch.load(paths["score_sde"], weights_only=True)
    obj["ema"]["shadow_params"] = obj["ema"]["shadow_params"][:-1]
    torch.save(obj, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match=r"the EMA holds \d+ tensors but NCSN\+\+ .* has \d+ parameters"):
        load_diffusion(tmp_path / "short.pth", image_size=8)
    obj = torch.load(paths["score_sde"], weights_only=True)
    obj["ema"]["shadow_params"][4] = torch.zeros(3, 3)  # all_modules.2.weight is (16, 3, 3, 3)
    torch.save(obj, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"all_modules\.2\.weight: file \(3, 3\) vs model \(16, 3, 3, 3\)"):
        load_diffusion(tmp_path / "shape.pth", image_size=8)


_EXECUTED = []


class _Payload:
    """Pickled with a __reduce__ that would run code on load: weights_only must refuse it."""

    def __reduce__(self):
        return (_EXECUTED.append, ("ran",))


def test_pickled_python_objects_are_refused_never_executed(tmp_path):
    torch.save({"ema": {"shadow_params": []}, "hook": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle non-tensor content"):
        load_diffusion(tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="never executes pickled code"):
        load_classifier(tmp_path / "evil.pth")
    assert _EXECUTED == []


def test_other_bad_inputs(files, tmp_path):
    d, nets, paths = files
    with pytest.raises(FileNotFoundError):
        load_diffusion(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="sha256 .* does not match"):
        load_diffusion(paths["ddpm"], sha256="0" * 64)
    torch.save({"step": 3, "optimizer": {}}, tmp_path / "opt.pth")
    with pytest.raises(CheckpointError, match="not a diffusion state_dict"):
        load_diffusion(tmp_path / "opt.pth")
    torch.save(nets["diffusers"].state_dict(), tmp_path / "flat.bin")
    with pytest.raises(CheckpointError, match="needs its config.json"):
        load_diffusion(tmp_path / "flat.bin")
    bad = tmp_path / "vdir"
    save_diffusers_dir(nets["diffusers"], {**TINY_DIFFUSERS, "resnet_time_scale_shift": "scale_shift"}, bad)
    with pytest.raises(CheckpointError, match="resnet_time_scale_shift='scale_shift' is not supported"):
        load_diffusion(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        load_diffusion(tmp_path / "empty")
    with pytest.raises(CheckpointError, match="give image_size"):
        load_diffusion(paths["adm"], num_head_channels=16)  # channel_mult (1, 2) fixes no image size


# ---------------------------------------------------------------------------------------------- classifiers
@pytest.mark.parametrize("kind, wrap, norm", [("wrn", None, "none"), ("wrn", "state_dict", "none"),
                                              ("dm-wrn", "model_state_dict", "cifar10")])
def test_classifier_round_trip(tmp_path, kind, wrap, norm):
    net = tiny_classifier(kind)
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    if kind == "wrn":  # files saved before PyTorch 0.4.1 lack the BN counters
        sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(sd if wrap is None else {wrap: sd, "epoch": 1}, tmp_path / "c.pt")
    clf = fastpurify.load_classifier(tmp_path / "c.pt")
    assert clf.meta["kind"] == kind and clf.normalize == norm and not clf.training
    assert not any(p.requires_grad for p in clf.parameters())
    x = torch.rand(2, 3, 32, 32)
    net._set_norm(norm)
    with torch.no_grad():
        assert torch.equal(clf(x), net(x))
    # normalisation inside the model: 'cifar10' changes the logits, and is what DiffPure's WRN-70-16 uses.
    other = load_classifier(tmp_path / "c.pt", normalize="cifar10" if norm == "none" else "none")
    with torch.no_grad():
        assert not torch.allclose(other(x), clf(x))


def test_imagenet_resnet50_has_normalisation_inside(tmp_path):
    import torchvision

    ref = torchvision.models.resnet50().eval()  # default init: non-zero everywhere
    torch.save(ref.state_dict(), tmp_path / "resnet50-0676ba61.pth")
    clf = load_classifier(tmp_path / "resnet50-0676ba61.pth")
    assert clf.meta["kind"] == "resnet50" and clf.meta["params"] == 25_557_032
    x = torch.rand(1, 3, 64, 64)
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        assert torch.equal(clf(x), ref((x - mean) / std))
    with pytest.raises(CheckpointError, match="looks like a 'resnet50' classifier, not 'wrn'"):
        load_classifier(tmp_path / "resnet50-0676ba61.pth", kind="wrn")


def test_unrecognised_classifier(tmp_path):
    torch.save({"net": {"conv.weight": torch.zeros(1)}}, tmp_path / "x.t7")
    with pytest.raises(CheckpointError, match="unrecognised classifier state_dict"):
        load_classifier(tmp_path / "x.t7")


def test_numpy_metadata_loads_but_other_globals_are_named(tmp_path):
    """Training scripts leave numpy scalars/arrays next to the weights: plain data, allowed.  Anything else (here an
    argparse.Namespace) is refused, naming the global."""
    import argparse

    import numpy as np

    net = tiny_classifier("wrn")
    torch.save({"state_dict": net.state_dict(), "best_acc": np.float64(0.93), "hist": np.zeros(3), "epoch": 7},
               tmp_path / "np.pt")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_classifier(tmp_path / "np.pt")(x), net(x))
    torch.save({"state_dict": net.state_dict(), "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pt")
    with pytest.raises(CheckpointError, match=r"needs the globals \['argparse.Namespace'\]"):
        load_classifier(tmp_path / "ns.pt")


# ---------------------------------------------------------------------------------------------- said, not assumed
@pytest.mark.parametrize("kind, norm", [("wrn", "none"), ("dm-wrn", "cifar100")])
def test_100_class_robustbench_layouts_load_and_give_100_logits(tmp_path, kind, norm):
    from fastpurify.models.classifiers import DMWideResNet, WideResNet

    net = (WideResNet(depth=10, widen_factor=2, num_classes=100) if kind == "wrn"
           else DMWideResNet(depth=10, width=2, num_classes=100, normalize="cifar100"))
    torch.nn.init.normal_(net.fc.weight if kind == "wrn" else net.logits.weight)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "c100.pt")
    clf = load_classifier(tmp_path / "c100.pt")
    assert clf.meta["kind"] == kind and clf.meta["config"]["num_classes"] == 100 and clf.normalize == norm
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        out = clf(x)
        assert out.shape == (2, 100) and torch.equal(out, net.eval()(x))


def test_adm_head_width_not_in_the_file_is_named_as_assumed(files):
    paths = files[2]
    # TINY_ADM was built with 16-wide heads; the shapes are the same with 64, so it loads — with another attention
    with pytest.warns(UserWarning, match="num_head_channels.*assumed 64"):
        m = load_diffusion(paths["adm"], image_size=16)
    assert m.meta["config"]["num_head_channels"] == 64 and "num_head_channels" in m.meta["assumed"]
    m = load_diffusion(paths["adm"], image_size=16, num_head_channels=16)
    assert m.meta["assumed"] == {}
    # an NCSN++ image size changes no shape either: named when it is the public CIFAR-10 model's 32 by default
    with pytest.warns(UserWarning, match="image_size.*assumed 32"):
        m = load_diffusion(paths["score_sde"])
    assert m.image_size == 32 and "image_size" in m.meta["assumed"]
    assert load_diffusion(paths["score_sde"], image_size=8).meta["assumed"] == {}


def test_wrong_kind_of_file_says_what_it_is_and_the_supported_kinds(files, tmp_path):
    paths = files[2]
    with pytest.raises(CheckpointError, match="'adm' diffusion model, not a classifier; supported kinds: wrn, "
                                              "dm-wrn, resnet50"):
        load_classifier(paths["adm"])
    torch.save(tiny_classifier("wrn").state_dict(), tmp_path / "wrn.pt")
    with pytest.raises(CheckpointError, match="'wrn' classifier, not a diffusion model; supported kinds: score_sde"):
        load_diffusion(tmp_path / "wrn.pt")


def test_loader_names_stay_importable_from_loaders():
    """Classifier loading and the shared file reading live in their own modules; callers' imports still work."""
    from fastpurify.models import checkpoint_files, classifier_loading, loaders

    assert loaders.load_classifier is classifier_loading.load_classifier
    assert loaders.CheckpointError is checkpoint_files.CheckpointError
    assert loaders.read_file is checkpoint_files.read_file and loaders.detect_kind is checkpoint_files.detect_kind
