"""What an audit reports besides the verdict: robust accuracy against ε (report.json 'eps_curve', its plot and
table), the labelled sample grid, and ImageNet data read as sweeps read it (on a stand-in ImageFolder tree)."""

import json
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fastpurify.evaluation.audit import AuditError, audit
from fastpurify.evaluation.audit import plots as audit_plots
from fastpurify.evaluation.audit.cli import main as audit_main
from fastpurify.evaluation.audit.eps_curve import strongest_exact
from fastpurify.evaluation.audit.run import load_data
from fastpurify.imageio import pyplot
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ZOO = Path(__file__).resolve().parent.parent / "examples" / "defences"
TINY = {"n": 8, "steps": 4, "n_reevals": 2, "n_select": 2, "max_eot": 8, "consistency_draws": 4, "large_eps_n": 4,
        "large_eps_steps": 5}
CHIHUAHUA, RACER = "n02085620", "n04037443"  # ImageNet-1k classes 151 and 751


class Blur(nn.Module):
    """A deterministic, smooth purifier: a 3×3 box blur (every draw the same, exact gradients)."""

    def forward(self, x):
        return nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def _digits_classifier():
    from fastpurify.zoo import digits

    return digits().classifier


def _points(report):
    return {p["multiple"]: p for p in report["eps_curve"]["points"]}


# ------------------------------------------------------------------------------------------ ε curve
def test_eps_curve_has_the_requested_radii_with_intervals():
    r = audit(f"{ZOO / 'noisy_blur'}.py:build", **TINY, eps_curve=(2.0, 0.25, 0.5))
    curve, pts = r["eps_curve"], _points(r)
    assert sorted(pts) == [0.0, 0.25, 0.5, 1.0, 2.0]  # the requested radii, the clean point and ε itself
    for m, p in pts.items():
        assert p["eps"] == pytest.approx(m * r["threat_model"]["eps"])
        assert p["interval"][0] <= p["mean"] <= p["interval"][1] and p["n"] == TINY["n"]
        assert p["draws"] == TINY["n_reevals"]  # noisy_blur is randomised: every report draw
    # the point at ε is the ensemble's (all n images here), the one at 0 the clean accuracy
    assert pts[1.0]["attack"] == "ensemble" and pts[1.0]["mean"] == pytest.approx(r["robust_accuracy"], abs=1e-4)
    assert pts[0.0]["attack"] == "clean" and pts[0.0]["mean"] == pytest.approx(r["clean_accuracy"], abs=1e-4)
    # the rerun attack is the exact one the ensemble found strongest
    exact = [a for a in r["protocol"]["attacks"] if a["spec"]["exact"] and not a["spec"]["cascade"]]
    assert curve["attack"] in {a["attack"] for a in exact}
    assert pts[2.0]["attack"] == curve["attack"]
    assert min(a["mean"] for a in exact) == next(a["mean"] for a in exact if a["attack"] == curve["attack"])


def test_eps_curve_is_monotone_on_a_deterministic_defence_and_zero_at_a_huge_radius():
    """A box blur (deterministic: one draw, no noise between radii) at a small ε: accuracy falls with the radius,
    never rising above the upper end of the smaller radius's interval; at 60 ε (any image reachable) it is ~0."""
    multiples = (0.25, 0.5, 2.0, 4.0, 60.0)
    r = audit(modules=(_digits_classifier(), Blur()), **{**TINY, "n": 16}, eps=0.05, eps_curve=multiples)
    pts = r["eps_curve"]["points"]
    assert [p["multiple"] for p in pts] == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 60.0]
    for smaller, larger in pairwise(pts):
        assert larger["mean"] <= smaller["interval"][1], (smaller, larger)
    assert r["eps_curve"]["monotone"] is True
    assert pts[-1]["mean"] <= 0.05 and pts[0]["mean"] >= 0.8  # broken at a huge radius, not broken unattacked
    assert pts[1]["mean"] > pts[-1]["mean"]  # the radius matters: a small ball is not the huge one


def test_eps_curve_off_and_bad_radii():
    r = audit(f"{ZOO / 'noisy_blur'}.py:build", **TINY, eps_curve=())
    assert r["eps_curve"] == {"skipped": "eps_curve = (): off"}
    for bad in ((0.5, -1.0), (float("inf"),), (0.0,)):
        with pytest.raises(AuditError, match="eps_curve"):
            audit(f"{ZOO / 'noisy_blur'}.py:build", **TINY, eps_curve=bad)


def test_strongest_exact_skips_transfer_and_cascaded_rows():
    def row(name, mean, steps=4, exact=True, cascade=False):
        return {"attack": name, "mean": mean, "spec": {"name": name, "steps": steps, "exact": exact,
                                                       "cascade": cascade, "kind": "pgd"}}

    rows = [row("pgd-ce", 0.6), row("apgd-ce", 0.5), row("apgd-ce@8", 0.5, steps=8), row("bpda", 0.1, exact=False),
            row("pgd-margin", 0.0, cascade=True), {"attack": "x", "skipped": "all at the floor", "spec": {}}]
    best = strongest_exact(rows)
    assert best.name == "apgd-ce" and best.steps == 4  # on a tie the first, the cheaper
    assert strongest_exact([row("bpda", 0.1, exact=False)]) is None


# ------------------------------------------------------------------------------------------ CLI files
CLI_ARGS = ["--n", "6", "--steps", "2", "--n-eval", "2", "--n-select", "1", "--max-eot", "2", "--eps-curve", "0.5,3"]


@pytest.mark.skipif(pyplot() is None, reason="matplotlib is not installed")
def test_cli_writes_the_eps_plot_table_and_a_labelled_grid(tmp_path):
    out = tmp_path / "out"
    assert audit_main([f"{ZOO / 'noisy_blur'}.py:build", *CLI_ARGS, "--out", str(out)]) == 0
    for name in ("grid.png", "accuracy_vs_eps.png", "accuracy_vs_steps.png", "gradient_consistency.png",
                 "loss_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    report = json.loads((out / "report.json").read_text())
    from fastpurify.evaluation.audit.plots import loss_curves

    curves = loss_curves(report)  # every attack that iterates, grouped by its loss, one value per iteration
    steps = {a["attack"]: a["spec"]["steps"] for a in report["protocol"]["attacks"]}
    assert {"pgd-ce", "apgd-ce"} <= set(curves["ce"]) and all(len(v) == steps[k] for k, v in curves["ce"].items())
    assert "accuracy_vs_eps.png" in report["plots"]["files"] and report["plots"]["grid"].startswith("labelled")
    assert sorted(p["multiple"] for p in report["eps_curve"]["points"]) == [0.0, 0.5, 1.0, 3.0]
    md = (out / "report.md").read_text()
    assert "## robust accuracy against ε" in md and "| 0.45 | 3 |" in md  # 3 × 0.15


def test_without_matplotlib_the_grid_is_unlabelled_and_said_so(tmp_path, monkeypatch):
    monkeypatch.setattr(audit_plots, "pyplot", lambda: None)
    out = tmp_path / "out"
    assert audit_main([f"{ZOO / 'noisy_blur'}.py:build", *CLI_ARGS, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "report.json", "report.md"]
    plots = json.loads((out / "report.json").read_text())["plots"]
    assert "skipped" in plots and plots["grid"].startswith("unlabelled")


def test_grid_shows_the_images_and_predictions_of_one_report_draw():
    """The purified row is report draw 0's purification of the chosen candidate: the classifier's prediction on it
    is the adversarial prediction in the column titles, which are the records' draw-0 predictions (very_noisy:
    its draws disagree often, so another draw's purification would show)."""
    r = audit(f"{ZOO / 'very_noisy'}.py:build", **TINY)
    g = audit_plots.grid_samples(r, k=8)
    records = r["protocol"]["records"][:8]
    assert g["label"] == [rec["label"] for rec in records]
    assert g["clean_pred"] == [rec["clean_preds"][0] for rec in records]
    assert g["adv_pred"] == [rec["adv_preds"][0] for rec in records]
    with torch.no_grad():
        assert _digits_classifier()(g["purified"]).argmax(1).tolist() == g["adv_pred"]
    assert torch.equal(g["adversarial"], r["_x_adv"][:8]) and torch.equal(g["clean"], r["_x"][:8])


# ------------------------------------------------------------------------------------------ data
def _imagenet_standin(root: Path, per_class: int = 3) -> Path:
    """An ImageFolder tree of two synset folders; each class's images a solid colour (red: chihuahua, blue:
    racer), so a loaded image's label can be checked against what it shows."""
    from PIL import Image

    for folder, rgb in ((CHIHUAHUA, (220, 30, 30)), (RACER, (30, 30, 220))):
        (root / folder).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(np.full((40, 50, 3), rgb, dtype=np.uint8)).save(root / folder / f"ILSVRC_{k}.JPEG")
    return root


def test_imagenet_data_loads_synset_labels(tmp_path):
    root = _imagenet_standin(tmp_path / "val")
    x, y, name = load_data(f"imagenet:{root}", 4)
    assert x.shape == (4, 3, 224, 224) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert set(y.tolist()) <= {151, 751} and "imagenet/val" in name and "ImageNet-1k class index" in name
    red = x[:, 0].mean((1, 2)) > x[:, 2].mean((1, 2))
    assert y.tolist() == [151 if is_red else 751 for is_red in red.tolist()]  # each image's own folder's class
    assert load_data(f"imagenet:{root}", 4)[1].tolist() == y.tolist()  # the seeded subset is reproducible


def test_audit_runs_on_imagenet_standin(tmp_path):
    root = _imagenet_standin(tmp_path / "val")
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 1000))
    with torch.no_grad():  # colour → class: red to 151, blue to 751
        classifier[2].weight.zero_(), classifier[2].bias.zero_()
        classifier[2].weight[151, 0], classifier[2].weight[751, 2] = 10.0, 10.0
    r = audit(modules=(classifier, Blur()), **{**TINY, "n": 4}, data=f"imagenet:{root}", eps_curve=(0.5,))
    assert r["dataset"].startswith("imagenet/val") and r["clean_accuracy"] == 1.0
    assert [p["multiple"] for p in r["eps_curve"]["points"]] == [0.0, 0.5, 1.0]


def test_bad_data_is_an_audit_error(tmp_path, capsys):
    cases = [("mnist", "unknown --data"), ("imagenet", "unknown --data"), (f"imagenet:{tmp_path}/none", "--data"),
             (f"cifar10:{tmp_path}", "missing CIFAR-10 batch"), ("digits", "--n 10000")]
    for data, message in cases:
        with pytest.raises(AuditError, match=message):
            audit(f"{ZOO / 'noisy_blur'}.py:build", **{**TINY, "n": 10000 if data == "digits" else 8}, data=data)
    _imagenet_standin(tmp_path / "val", per_class=1)
    (tmp_path / "val" / CHIHUAHUA).rename(tmp_path / "val" / "cats")
    with pytest.raises(AuditError, match="cats"):
        load_data(f"imagenet:{tmp_path / 'val'}", 3)
    assert audit_main([f"{ZOO / 'noisy_blur'}.py:build", "--data", "mnist", "--out", str(tmp_path / "o")]) == 2
    assert "unknown --data 'mnist'" in capsys.readouterr().err and not (tmp_path / "o").exists()
