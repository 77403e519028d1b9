"""The embedded default models: safe loading, the card, and the quality bars of the core issue."""

import json

import torch

import fastpurify
from fastpurify.zoo import digits
from fastpurify.zoo.embedded import WEIGHTS_DIR, load_split, split_indices

DEMO_PRESET = "diffpure"  # the demo's defence; its t* is the preset default


def test_split_is_fixed_disjoint_and_stratified():
    s = split_indices()
    sets = [set(s[k]) for k in ("train", "val", "test")]
    assert sum(map(len, sets)) == 1797 and not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    _, y = load_split("test")
    assert y.bincount().min() >= 35  # stratified: every class present in the held-out split
    x, _ = load_split("train")
    assert x.shape[1:] == (1, 16, 16) and float(x.min()) >= 0 and float(x.max()) <= 1


def test_weights_are_safetensors_with_a_card():
    for f in ("digits_ddpm.safetensors", "digits_classifier.safetensors", "digits_card.json", "digits_samples.png"):
        assert (WEIGHTS_DIR / f).exists(), f
    size = sum((WEIGHTS_DIR / f).stat().st_size for f in ("digits_ddpm.safetensors", "digits_classifier.safetensors"))
    assert size < 5 * 2**20
    card = json.loads((WEIGHTS_DIR / "digits_card.json").read_text())
    assert card["command"].startswith("fastpurify train-digits") and "seed" in card
    assert card["data"]["split"]["test"] == 360


def test_digits_object_api():
    m = digits()
    x, y = m.test_data()
    assert x.shape == (360, 1, 16, 16) and y.shape == (360,)
    assert m.diffusion.image_size == 16 and m.diffusion.channels == 1
    assert not any(p.requires_grad for p in m.classifier.parameters())


def test_classifier_accuracy_bar():
    m = digits()
    x, y = m.test_data()
    with torch.no_grad():
        acc = float((m.classifier(x).argmax(1) == y).float().mean())
    assert acc >= 0.95, acc


def test_purified_clean_accuracy_bar():
    """DiffPure preset at the demo's t*: purified clean held-out accuracy ≥ 90 % (one purification per image)."""
    m = digits()
    x, y = m.test_data()
    with torch.no_grad():
        x_pur = fastpurify.purify(x, preset=DEMO_PRESET, seed=123)
        acc = float((m.classifier(x_pur).argmax(1) == y).float().mean())
    assert acc >= 0.90, acc


def test_default_model_is_used_for_digit_shaped_input():
    x, _ = digits().test_data()
    a = fastpurify.purify(x[:4], preset="ddim", seed=0)
    b = fastpurify.purify(x[:4], model=digits(), preset="ddim", seed=0)
    assert torch.equal(a, b)
