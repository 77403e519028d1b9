"""Gradient modes (fastpurify.grad, docs/METHODS.md §9) against plain unrolled autograd, on a tiny float64 UNet."""

import pytest
import torch

from fastpurify import PurifiedClassifier, Purifier, purify
from fastpurify.grad import GRAD_MODES, saved_bytes
from fastpurify.models import EpsDiffusion, SmallCNN, SmallUNet
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (preset, settings): DDPM ancestral, respaced DDIM η = 0, VP-SDE Euler–Maruyama.
SAMPLERS = {"ddpm": ("ddpm", dict(t_star=10)), "ddim": ("ddim", dict(t_star=20, steps=5)),
            "vpsde": ("diffpure", dict(t_star=0.01))}


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(0)
    return EpsDiffusion(SmallUNet(1, 8, (1, 2)), image_size=8, channels=1).double().eval()


def _data(seed=1, n=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64),
            torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64))


def _value_and_grad(pur, x, w, seed=7):
    xr = x.clone().requires_grad_(True)
    out = pur(xr, seed=seed)  # fixed per-sample noise: the same draws in every mode
    (g,) = torch.autograd.grad((out * w).sum(), xr)
    return out.detach(), g


class ToyGuidance:
    """A differentiable guidance hook: g = ∇_u −‖tanh u − sin(2x_in − 1)‖² + 0.1·ε̂.  Its value is the same with or
    without an outer graph, and the gradient reaches x through u, ε̂ and the x_in target."""

    def bind(self, x_in, model, seeds, round, backend=None):
        target = torch.sin(2 * x_in - 1)

        def hook(u, eps, i):
            outer = torch.is_grad_enabled() and u.requires_grad
            with torch.enable_grad():
                uu = u if outer else u.detach().requires_grad_(True)
                tgt = target if outer else target.detach()
                J = -((torch.tanh(uu) - tgt) ** 2).flatten(1).sum(1)
                (g,) = torch.autograd.grad(J.sum(), uu, create_graph=outer)
            return 0.5 * g + 0.1 * eps

        return hook


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_full_equals_unrolled_autograd(model64, sampler):
    preset, kw = SAMPLERS[sampler]
    x, w = _data()
    v_ref, g_ref = _value_and_grad(Purifier(model64, preset, grad="autograd", **kw), x, w)
    v, g = _value_and_grad(Purifier(model64, preset, grad="full", **kw), x, w)
    assert torch.equal(v, v_ref)
    assert float(g_ref.abs().max()) > 1e-3
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-10)


def test_full_with_guidance_equals_autograd(model64):
    x, w = _data()
    ref = Purifier(model64, "ddpm", t_star=8, grad="autograd", guidance=ToyGuidance())
    v_ref, g_ref = _value_and_grad(ref, x, w)
    v, g = _value_and_grad(Purifier(model64, "ddpm", t_star=8, grad="full", guidance=ToyGuidance()), x, w)
    torch.testing.assert_close(v, v_ref, atol=1e-13, rtol=0)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-10)
    # The guidance path matters: dropping the x_in target's gradient changes the answer.
    unguided = _value_and_grad(Purifier(model64, "ddpm", t_star=8, grad="full"), x, w)[1]
    assert float((g - unguided).abs().max()) > 1e-3


@pytest.mark.parametrize("view,jacobian", [("x_t", "scaled_identity"), ("tweedie", "scaled_identity"),
                                           ("tweedie", "exact")])
def test_full_with_agdm_equals_autograd(model64, view, jacobian):
    """AGDM's hook under the per-step recompute: the same values bit for bit and the same gradient as plain autograd,
    for every view (the scaled-identity Tweedie view's g depends on ε̂, which both modes must differentiate)."""
    from fastpurify.methods.guidance import AGDMConfig, AGDMGuidance

    torch.manual_seed(0)
    aux = SmallCNN(1, 10, 4).double().eval()
    x, w = _data()
    cfg = AGDMConfig(scale=300.0, view=view, tweedie_jacobian=jacobian)
    v_ref, g_ref = _value_and_grad(Purifier(model64, "ddpm", t_star=8, grad="autograd",
                                            guidance=AGDMGuidance(aux, cfg)), x, w)
    v, g = _value_and_grad(Purifier(model64, "ddpm", t_star=8, grad="full", guidance=AGDMGuidance(aux, cfg)), x, w)
    assert torch.equal(v, v_ref)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-10)


def test_adjoint_converges_to_full_as_dt_shrinks(model64):
    """The continuous adjoint reconstructs states in reverse time: first-order error in dt.  Stated tolerance
    (t* = 0.02, relative ℓ2 error of the input gradient): ≤ 1e-2 at 10 steps (dt 2e-3), ≤ 3e-3 at 40 (5e-4)."""
    x, w = _data()
    errs = []
    for steps in (10, 40):
        _, g_full = _value_and_grad(Purifier(model64, "diffpure", t_star=0.02, steps=steps, grad="full"), x, w)
        _, g_adj = _value_and_grad(Purifier(model64, "diffpure", t_star=0.02, steps=steps, grad="adjoint"), x, w)
        errs.append(float((g_adj - g_full).norm() / g_full.norm()))
    assert errs[0] <= 1e-2 and errs[1] <= 3e-3 and errs[1] < errs[0] / 2.5, errs


def test_adjoint_is_vpsde_only_and_needs_no_stored_steps(model64):
    with pytest.raises(ValueError, match="VP-SDE adjoint"):
        Purifier(model64, "ddpm", t_star=10, grad="adjoint")
    x, _ = _data()
    pur = Purifier(model64, "diffpure", t_star=0.02, grad="adjoint")
    xr = x.clone().requires_grad_(True)
    _, nbytes = saved_bytes(lambda: pur(xr, seed=0))
    assert nbytes <= 4 * x.numel() * x.element_size() + 4096  # O(1) in steps: the final state, not 20 of them


def test_full_stores_one_state_per_step(model64):
    """'full' keeps x_t per step (plus O(1)); plain autograd keeps every step's UNet activations."""
    x, _ = _data()
    state = x.numel() * x.element_size()
    counts = {}
    for mode in ("full", "autograd"):
        for k in (10, 20):
            pur, xr = Purifier(model64, "ddpm", t_star=k, grad=mode), x.clone().requires_grad_(True)
            counts[mode, k] = saved_bytes(lambda pur=pur, xr=xr: pur(xr, seed=0))[1]
    per_step = (counts["full", 20] - counts["full", 10]) / 10
    assert per_step <= 1.1 * state + 64  # the state, a coefficient-row view and the step counter
    assert counts["autograd", 20] > 20 * counts["full", 20]


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_full_with_kept_activations_is_the_same_gradient(model64, sampler):
    """grad_memory: the steps that fit keep their graph (no recompute), the rest are recomputed; same gradient as
    recomputing every step and as plain autograd, and the memory kept stays within the budget plus one step."""
    preset, kw = SAMPLERS[sampler]
    x, w = _data()
    v_ref, g_ref = _value_and_grad(Purifier(model64, preset, grad="autograd", **kw), x, w)
    _, g_full = _value_and_grad(Purifier(model64, preset, grad="full", **kw), x, w)
    weights = {t.untyped_storage().data_ptr() for t in (*model64.parameters(), *model64.buffers())}
    all_steps = Purifier(model64, preset, grad="full", grad_memory=1 << 40, **kw)
    xr = x.clone().requires_grad_(True)
    _, every = saved_bytes(lambda: all_steps(xr, seed=7), exclude=weights)
    n = all_steps.config.nfe
    partial = Purifier(model64, preset, grad="full", grad_memory=every // 2, **kw)
    xr = x.clone().requires_grad_(True)
    _, half = saved_bytes(lambda: partial(xr, seed=7), exclude=weights)
    # Kept: at most the budget; the other steps store their state (one image batch each).
    assert every // 4 < half <= every // 2 + n * x.numel() * x.element_size() + 4096
    for pur in (all_steps, partial):
        v, g = _value_and_grad(pur, x, w)
        assert torch.equal(v, v_ref)
        torch.testing.assert_close(g, g_full, atol=1e-13, rtol=1e-12)
        torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-10)


def test_grad_memory_is_checked(model64):
    with pytest.raises(TypeError, match="grad_memory"):
        Purifier(model64, "ddpm", t_star=10, grad_memory=1.5)
    with pytest.raises(ValueError, match="grad_memory"):
        Purifier(model64, "ddpm", t_star=10, grad_memory=-1)


def test_bpda_is_identity_backward(model64):
    x, w = _data()
    v_ref, _ = _value_and_grad(Purifier(model64, "ddpm", t_star=10, grad="autograd"), x, w)
    v, g = _value_and_grad(Purifier(model64, "ddpm", t_star=10, grad="bpda"), x, w)
    assert torch.equal(v, v_ref) and torch.equal(g, w)


def test_surrogate_value_from_defence_gradient_from_surrogate(model64):
    x, w = _data()
    defence = Purifier(model64, "ddpm", t_star=20, grad="surrogate", surrogate={"preset": "ddim", "steps": 4})
    v_def, _ = _value_and_grad(Purifier(model64, "ddpm", t_star=20, grad="autograd"), x, w)
    _, g_sur = _value_and_grad(Purifier(model64, "ddim", t_star=20, steps=4, grad="autograd"), x, w)
    v, g = _value_and_grad(defence, x, w)
    assert torch.equal(v, v_def)
    torch.testing.assert_close(g, g_sur, atol=1e-12, rtol=1e-10)
    rec = defence.grad_config()
    assert rec["grad_mode"] == "surrogate" and rec["defense"]["nfe"] == 20
    assert rec["surrogate"]["preset"] == "ddim" and rec["surrogate"]["nfe"] == 4 and rec["surrogate"]["grad_mode"] == "full"


def test_none_detaches_and_modes_are_checked(model64):
    x, _ = _data()
    out = Purifier(model64, "ddpm", t_star=5, grad="none")(x.clone().requires_grad_(True), seed=0)
    assert not out.requires_grad
    assert Purifier(model64, "ddpm", t_star=5).grad == "full"  # the default when gradients are required
    assert set(GRAD_MODES) == {"full", "autograd", "adjoint", "surrogate", "bpda", "none"}
    with pytest.raises(ValueError, match="unknown grad mode"):
        Purifier(model64, "ddpm", t_star=5, grad="exact")
    with pytest.raises(ValueError, match="surrogate"):
        Purifier(model64, "ddpm", t_star=5, grad="surrogate")
    with pytest.raises(ValueError, match="unknown grad mode"):
        purify(x, model=model64, preset="ddpm", t_star=5, grad="straight")


def test_fixed_noise_seed_replays_the_same_noise(model64):
    x, w = _data()
    pur = Purifier(model64, "ddpm", t_star=10, fixed_noise_seed=5)
    a, ga = _value_and_grad(pur, x, w, seed=None)
    b, gb = _value_and_grad(pur, x, w, seed=None)
    assert torch.equal(a, b) and torch.equal(ga, gb)
    assert pur.grad_config()["fixed_noise_seed"] == 5
    fresh = Purifier(model64, "ddpm", t_star=10)
    assert float((fresh(x) - fresh(x)).abs().max()) > 1e-3


@pytest.mark.parametrize("mode", ["full", "autograd", "bpda", "adjoint"])
def test_parameters_receive_no_gradient(model64, mode):
    """Frozen weights: an attack's backward reaches the input only, whatever the mode."""
    clf = SmallCNN(1, 10, 8).double()
    assert all(p.requires_grad for p in clf.parameters())
    pc = PurifiedClassifier(Purifier(model64, "diffpure", t_star=0.01, grad=mode), clf)
    x = _data()[0].requires_grad_(True)
    pc(x).logsumexp(1).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in list(clf.parameters()) + list(model64.parameters()))
    assert pc.describe()["grad_mode"] == mode and pc.describe()["noise"] == "fresh per call"


@pytest.mark.slow
def test_full_peak_memory_is_bounded_on_the_embedded_model(tmp_path):
    """benchmarks/bench_grad.py on the digits model (100 VP-SDE steps, batch 32), each mode in a fresh process:
    'full' adds ≤ 3× what forward-only purification adds to the peak RSS; plain autograd adds far more."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).parents[1] / "benchmarks" / "bench_grad.py"
    out = tmp_path / "bench_grad.json"
    subprocess.run([sys.executable, str(bench), "--models", "digits", "--modes", "forward,full,autograd",
                    "--out", str(out)], check=True, capture_output=True)
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["full"]["nfe"] == 100
    assert rows["full"]["peak_above_base_vs_forward"] <= 3.0 and rows["full"]["peak_rss_vs_forward"] <= 3.0
    assert rows["autograd"]["peak_above_base_mib"] > 10 * rows["full"]["peak_above_base_mib"]
