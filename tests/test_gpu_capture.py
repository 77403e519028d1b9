"""CUDA-graph capture of whole purifications, checked on the CPU with a capture double (tests/capture_double.py):
`torch.cuda.graph` / `CUDAGraph` stand-ins that run on CPU tensors, raise on what real capture forbids (the CUDA
generator's state and seeds, fork_rng over CUDA devices, synchronize, host reads of device tensors, nested capture)
and replay the recorded ops like a graph.  Code in fastpurify.grad and fastpurify.samplers.graphed sees its tensors
as CUDA tensors, so their CUDA-only branches run here.

The regression: before the fix, grad='full' saved and restored the CUDA RNG state around every step's recompute,
which PyTorch forbids during capture ("Cannot call CUDAGeneratorImpl::current_seed during CUDA graph capture"), so
Purifier(graphs=True, grad='full') could never be captured.  test_the_pre_fix_grad_fails_under_the_double runs the
same purification with grad.py as it was (commit f0acbc5) and sees the double raise.
"""

import subprocess
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import fastpurify.api as api
from fastpurify import Purifier
from fastpurify.models import EpsDiffusion, SmallUNet
from fastpurify.models import fast
from fastpurify.samplers.graphed import CaptureRefused
from tests.capture_double import CaptureDouble, CaptureViolation
from tests.test_graphed import CASES, _data, _model, _value_and_grad, assert_calls_match_eager
from tests.utils import one_torch_thread  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
PRE_FIX = "f0acbc5"  # the last commit whose fastpurify/grad.py saved the CUDA RNG state inside capture


# ---------------------------------------------------------------------------------------------- the double itself
def _forbidden_calls(cap):
    """name → a call real capture forbids (built inside the double: the CUDA state comes from its emulation)."""
    dev = torch.ones(3)
    cap.on_device(dev)
    state = torch.cuda.get_rng_state()

    def made_inside():
        return dev * 2  # computed during capture from a device tensor: a device tensor

    def fork():
        with torch.random.fork_rng(devices=[0]):
            pass

    return {
        "cuda.get_rng_state": lambda: torch.cuda.get_rng_state(),
        "cuda.set_rng_state": lambda: torch.cuda.set_rng_state(state),
        "fork_rng(cuda)": fork,
        "cuda.manual_seed": lambda: torch.cuda.manual_seed(1),
        "torch.manual_seed": lambda: torch.manual_seed(1),  # reaches torch.cuda.manual_seed_all
        "cuda.initial_seed": lambda: torch.cuda.initial_seed(),
        "cuda.seed": lambda: torch.cuda.seed(),
        "default_generator.initial_seed": lambda: torch.cuda.default_generators[0].initial_seed(),
        "cuda.synchronize": lambda: torch.cuda.synchronize(),
        "item": lambda: made_inside().sum().item(),
        "cpu": lambda: made_inside().cpu(),
        "tolist": lambda: made_inside().tolist(),
        "to('cpu')": lambda: made_inside().to("cpu"),
        "bool": lambda: bool((made_inside() > 0).all()),
        "nonzero": lambda: made_inside().nonzero(),
        "nested capture": lambda: torch.cuda.graph(torch.cuda.CUDAGraph()).__enter__(),
    }


FORBIDDEN = ["cuda.get_rng_state", "cuda.set_rng_state", "fork_rng(cuda)", "cuda.manual_seed", "torch.manual_seed",
             "cuda.initial_seed", "cuda.seed", "default_generator.initial_seed", "cuda.synchronize", "item", "cpu",
             "tolist", "to('cpu')", "bool", "nonzero", "nested capture"]
HOST_READS = {"item", "cpu", "tolist", "to('cpu')", "bool", "nonzero"}


@pytest.mark.parametrize("name", FORBIDDEN)
def test_the_double_raises_on_what_capture_forbids(name):
    saved = torch.get_rng_state()
    with CaptureDouble() as cap:
        calls = _forbidden_calls(cap)
        if name != "nested capture":
            # Outside capture the same call is fine (the CUDA RNG is emulated; host reads of device tensors allowed).
            (lambda: torch.ones(3).mul(2).tolist() if name in HOST_READS else calls[name]())()
        with pytest.raises(CaptureViolation, match="during CUDA graph capture"):
            with torch.cuda.graph(torch.cuda.CUDAGraph()):
                calls[name]()
        assert not cap.capturing and len(cap.violations) == 1
    torch.set_rng_state(saved)


def test_the_double_allows_host_work_and_replays_like_a_graph():
    """Host tensors made during capture (a coefficient table) may be read; replays recompute from the static inputs
    in place: new values in the same output tensors, views and in-place ops included."""
    with CaptureDouble() as cap:
        w, x = torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0])
        cap.on_device(w, x)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            table = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
            assert table.tolist() == [[0.5, 0.25]]  # host tensor: fine
            y = w * x + 1
            v = y.view(2, 1)
            v.mul_(2)
            z = y.sum()
        assert torch.equal(y, torch.tensor([6.0, 8.0])) and z.item() == 14.0  # outside capture: reads are fine
        x.copy_(torch.tensor([2.0, -1.0]))
        g.replay()
        assert torch.equal(y, torch.tensor([10.0, -4.0])) and float(z) == 6.0 and cap.replays == 1
    # Everything patched is put back.
    assert "device" not in vars(torch.Tensor) and "item" not in vars(torch.Tensor)
    assert torch.cuda.graph.__module__ == "torch.cuda.graphs"
    assert torch.cuda.get_rng_state.__module__ == "torch.cuda.random"


def test_device_pretence_is_limited_to_the_named_modules():
    t = torch.ones(1)
    with CaptureDouble(pretend=(__name__,)):
        assert t.device == torch.device("cuda", 0)  # read from this module: pretends
        assert eval("t.device", {"__name__": "elsewhere", "t": t}).type == "cpu"  # any other module: the truth
        assert str(t.device) == "cuda:0" and t.is_cuda is False  # only .device, only here
    assert t.device.type == "cpu"


# ---------------------------------------------------------------------------------------------- purification
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("grad", ["full", "autograd"])
def test_captured_purification_equals_eager_bit_for_bit(case, grad):
    """graphs=True as on a GPU: the first call captures the forward (and, training, the backward) graph, later
    calls replay them with new images and seeds; value and input gradient equal eager bit for bit.  The CUDA-only
    branches of the recompute ran: the CUDA generator is saved in eager warm-ups, never while capturing."""
    preset, kw = CASES[case]
    m = _model()
    eager = Purifier(m, preset, grad=grad, **kw)
    with CaptureDouble() as cap:
        pur = Purifier(m, preset, grad=grad, graphs="static", **kw)
        cap.capture(pur)
        assert pur.grad_config()["speed"]["graphs"]["capture"]
        assert_calls_match_eager(pur, eager, "replay")
    assert cap.captures == 3 and cap.replays == 9 and not cap.violations  # train fwd + bwd, no-grad fwd
    if grad == "full":
        assert cap.emulated["torch.cuda.get_rng_state"] > 0 and cap.emulated["torch.cuda.set_rng_state"] > 0


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("opts", [dict(precision="bf16"), dict(grad_memory=1 << 30), dict(channels_last=True),
                                  dict(compile=True, precision="bf16")], ids=["bf16", "grad_memory", "cl", "compiled"])
def test_captured_full_with_speed_options_equals_eager(opts, monkeypatch):
    if opts.get("compile"):
        monkeypatch.setattr(fast, "COMPILE_BACKEND", "aot_eager")  # aten graphs: the double records them
    m = _model()
    eager = Purifier(m, "ddpm", grad="full", t_star=6, **opts)
    with CaptureDouble() as cap:
        pur = Purifier(m, "ddpm", grad="full", t_star=6, graphs="static", **opts)
        cap.capture(pur)
        for call in range(2):
            x, w = _data(seed=call + 1)
            v, g = _value_and_grad(pur, x, w, call)
            v_ref, g_ref = _value_and_grad(eager, x, w, call)
            assert torch.equal(v, v_ref) and torch.equal(g, g_ref)
    assert cap.captures == 2 and cap.replays == 4


def _load_pre_fix_grad():
    try:
        src = subprocess.run(["git", "show", f"{PRE_FIX}:fastpurify/grad.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history with commit {PRE_FIX} not available (shallow clone or no git)")
    mod = types.ModuleType("pre_fix_grad")
    exec(compile(src, f"{PRE_FIX}:fastpurify/grad.py", "exec"), mod.__dict__)
    return mod


def test_the_pre_fix_grad_fails_under_the_double(monkeypatch):
    """The same captured 'full' purification with grad.py as it was: the recompute asks for the CUDA generator's
    state while the forward graph is being captured, which the double (like PyTorch) refuses."""
    old = _load_pre_fix_grad()
    assert hasattr(old, "_rng_state")  # the code that saved the CUDA RNG state per step
    monkeypatch.setattr(api, "StepCheckpoint", old.StepCheckpoint)
    m, (x, w) = _model(), _data()
    with CaptureDouble(pretend=("pre_fix_grad", "fastpurify.samplers.graphed")) as cap:
        pur = Purifier(m, "ddpm", grad="full", t_star=6, graphs="static")
        cap.capture(pur)
        with pytest.raises(CaptureViolation, match="get_rng_state during CUDA graph capture"):
            _value_and_grad(pur, x, w, 0)
    assert cap.emulated["torch.cuda.get_rng_state"] > 0  # it got that far eagerly: the warm-ups ran


class _Sampling(nn.Module):
    """A network that draws from torch's RNG on every call (a sampling layer)."""

    def __init__(self):
        super().__init__()
        self.net = SmallUNet(1, 8, (1, 2))

    def forward(self, x, t):
        return self.net(x, t) + 1e-3 * torch.randn_like(x)


def test_a_network_drawing_torch_rng_is_refused_before_capture_and_auto_falls_back():
    torch.manual_seed(0)
    m = EpsDiffusion(_Sampling(), image_size=8, channels=1).eval()
    x, w = _data()
    with CaptureDouble() as cap:
        pur = Purifier(m, "ddpm", t_star=6, graphs="static")
        cap.capture(pur)
        with pytest.raises(CaptureRefused, match="draws from torch's random generator"):
            _value_and_grad(pur, x, w, 0)
        assert cap.captures == 0
        auto = Purifier(m, "ddpm", t_star=6, graphs="static")
        cap.capture(auto)
        auto.graphs.setting = "auto"
        _value_and_grad(auto, x, w, 0)
        g = auto.grad_config()["speed"]["graphs"]
        assert not g["active"] and "random generator" in g["reason"]


@pytest.mark.usefixtures("one_torch_thread")
def test_eager_full_still_replays_torch_rng_for_such_a_network():
    """Outside capture the recompute replays torch's generator: 'full' equals plain autograd bit for bit even for a
    network that samples."""
    torch.manual_seed(0)
    m = EpsDiffusion(_Sampling(), image_size=8, channels=1).eval()
    x, w = _data()
    torch.manual_seed(3)
    v_full, g_full = _value_and_grad(Purifier(m, "ddpm", t_star=6, grad="full"), x, w, 0)
    torch.manual_seed(3)
    v_ag, g_ag = _value_and_grad(Purifier(m, "ddpm", t_star=6, grad="autograd"), x, w, 0)
    assert torch.equal(v_full, v_ag) and torch.equal(g_full, g_ag)


def test_clear_frees_the_static_runs():
    m, (x, w) = _model(), _data()
    with CaptureDouble() as cap:
        pur = Purifier(m, "ddim", t_star=20, steps=2, graphs="static")
        cap.capture(pur)
        xr = x.clone().requires_grad_(True)
        y = pur(xr, seed=1)
        runs = list(pur.graphs.runs.values())
        assert runs and runs[0].forward_graph.log is not None
        pur.graphs.clear()
        assert not pur.graphs.runs and runs[0].fn is None and not hasattr(runs[0], "forward_graph")
        with pytest.raises(RuntimeError, match="freed"):
            y.sum().backward()
        _value_and_grad(pur, x, w, 1)  # captures again
        assert cap.captures == 4


# ---------------------------------------------------------------------------------------------- compile and hooks
def test_compiled_network_with_a_users_hook_raises_at_once_and_runs_without_it(monkeypatch):
    """A forward hook that stores features used to recompile every call inside the compiled region and fail after
    RECOMPILE_LIMIT calls (after minutes of compiling); now the first compiled call says hooks stop compilation.
    Without compile the hook runs as usual; removed, the compiled network runs."""
    monkeypatch.setattr(fast, "COMPILE_BACKEND", "aot_eager")
    m, (x, _) = _model(), _data()
    feats = []
    handle = m.net.register_forward_hook(lambda mod, inp, out: feats.append(out.detach()))
    try:
        compiled = Purifier(m, "ddim", t_star=20, steps=2, compile=True)
        with pytest.raises(RuntimeError, match=r"hooks stop compilation.*SmallUNet: 1 forward hook"):
            with torch.no_grad():
                compiled(x, seed=0)
        assert not compiled.denoiser.compile_seconds  # nothing was compiled
        with torch.no_grad():
            Purifier(m, "ddim", t_star=20, steps=2)(x, seed=0)
        assert len(feats) == 2  # eager: the hook saw both steps
    finally:
        handle.remove()
    with torch.no_grad():
        compiled(x, seed=0)
    assert compiled.denoiser.compile_seconds


def test_a_global_module_hook_also_stops_compilation(monkeypatch):
    monkeypatch.setattr(fast, "COMPILE_BACKEND", "aot_eager")
    m, (x, _) = _model(), _data()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda mod, inp, out: None)
    try:
        with pytest.raises(RuntimeError, match="register_module_forward_hook|_global_forward_hooks"):
            with torch.no_grad():
                Purifier(m, "ddim", t_star=20, steps=2, compile=True)(x, seed=0)
    finally:
        handle.remove()
