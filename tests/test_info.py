import json
import os
import subprocess
import sys


ENV = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTPURIFY_BACKEND")}


def _run(code_or_args, env=ENV):
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, env=env, timeout=120)


def test_info_json_lists_every_backend_with_reason():
    r = _run(["-m", "fastpurify.info", "--json"])
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert set(d["backends"]) == {"torch", "cpu", "triton", "cuda"}
    for name, b in d["backends"].items():
        assert b["available"] or b["reason"], name
    assert d["backends"]["torch"]["available"]
    assert "forward_diffuse" in d["backends"]["torch"]["ops"]
    assert d["cpu_isa"] in (None, "baseline", "avx2", "avx512")
    assert isinstance(d["torch_cpu_isa"], str) and d["torch_cpu_isa"]  # ATen's own, e.g. 'AVX2' or 'DEFAULT'
    # Without a GPU verification record for this device the automatic choice on CUDA is the reference, and says why.
    cuda = d["automatic"]["cuda"]
    if cuda["order"] == ["torch"]:
        assert "not yet verified on a GPU" in cuda["reason"] and "benchmarks/gpu_check.py" in cuda["reason"]
    else:
        assert cuda["order"][-1] == "torch" and "verified on" in cuda["reason"]
    # The speed options say what they do here: fp32 runs everywhere; without a GPU, graphs say capture is impossible.
    assert d["precision"]["cpu"]["fp32"] == "native"
    assert set(d["speed_options"]) == {"compile", "channels_last", "graphs", "grad_memory"}
    if not d["cuda_available"]:
        assert "needs a CUDA device" in d["speed_options"]["graphs"]


def test_import_works_without_the_extension():
    """With fastpurify._C unimportable, import and purify still work on torch; forcing 'cpu' explains why not."""
    code = (
        "import sys; sys.modules['fastpurify._C'] = None\n"
        "import torch, fastpurify\n"
        "from fastpurify import ops\n"
        "b = fastpurify.available_backends()\n"
        "assert not b['cpu']['available'] and 'not built' in b['cpu']['reason'], b\n"
        "x0 = torch.rand(2, 1, 4, 4); a = torch.ones(3); t = torch.zeros(2, dtype=torch.long)\n"
        "ops.forward_diffuse(x0, a, a, t, t)\n"
        "try:\n"
        "    ops.forward_diffuse(x0, a, a, t, t, backend='cpu'); raise SystemExit('no error')\n"
        "except RuntimeError as e:\n"
        "    assert 'not built' in str(e), e\n"
        "print('ok')\n"
    )
    r = _run(["-c", code])
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_cli_help_lists_commands():
    r = _run(["-m", "fastpurify", "--help"])
    assert r.returncode == 0 and "demo" in r.stdout and "train-digits" in r.stdout
    assert _run(["-m", "fastpurify", "bogus"]).returncode == 2
