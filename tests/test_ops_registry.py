"""The automatic backend choice on CUDA: the torch reference until benchmarks/gpu_check.py has passed on that kind of
GPU, then the verified compiled backends first.  Tested through the pure selection function with given device names
and capabilities (no GPU needed), and through mark_gpu_verified writing a record file."""

import json

import pytest
import torch

import fastpurify
from fastpurify.ops import registry
from fastpurify.ops.registry import NOT_VERIFIED, load_verified, mark_gpu_verified, verified_priority

H100, SM90 = "NVIDIA H100 80GB HBM3", (9, 0)
VERSIONS = (fastpurify.__version__, "2.11.0+cu128")


def _record(**kw):
    r = {"gpu": H100, "capability": "9.0", "fastpurify": VERSIONS[0], "torch": "2.11.0+cu128", "commit": "abc1234",
         "date": "2025-01-01", "backends": ["cuda", "triton"]}
    return {**r, **kw}


def test_unverified_gpu_gets_the_reference_and_the_reason():
    order, reason = verified_priority(H100, SM90, [], *VERSIONS)
    assert order == ("torch",)
    assert NOT_VERIFIED in reason and "benchmarks/gpu_check.py" in reason and H100 in reason


def test_verified_gpu_puts_the_passed_backends_first():
    assert verified_priority(H100, SM90, [_record()], *VERSIONS)[0] == ("cuda", "triton", "torch")
    assert verified_priority(H100, SM90, [_record(backends=["triton"])], *VERSIONS)[0] == ("triton", "torch")
    # torch patch releases and local tags match; another minor release does not
    assert verified_priority(H100, SM90, [_record()], VERSIONS[0], "2.11.1")[0][0] == "cuda"
    assert verified_priority(H100, SM90, [_record()], VERSIONS[0], "2.14.1+cu130")[0] == ("torch",)


@pytest.mark.parametrize("other", [dict(gpu="NVIDIA A100-SXM4-80GB"), dict(capability="8.0"),
                                   dict(fastpurify="0.0.1"), dict(backends=[])])
def test_a_record_for_something_else_verifies_nothing(other):
    order, reason = verified_priority(H100, SM90, [_record(**other)], *VERSIONS)
    assert order == ("torch",) and NOT_VERIFIED in reason


def test_records_combine_backends_of_the_same_device():
    recs = [_record(backends=["triton"]), _record(backends=["cuda"], commit="def5678")]
    assert verified_priority(H100, SM90, recs, *VERSIONS)[0] == ("cuda", "triton", "torch")


def test_mark_gpu_verified_writes_a_record_the_selection_reads(tmp_path):
    path = tmp_path / "gpu_verified.json"
    rec = mark_gpu_verified(["triton", "cuda"], gpu=H100, capability=SM90, commit="abc1234", path=path)
    assert rec["backends"] == ["cuda", "triton"] and rec["capability"] == "9.0" and rec["commit"] == "abc1234"
    assert rec["fastpurify"] == fastpurify.__version__ and rec["torch"] == torch.__version__ and rec["date"]
    order, reason = verified_priority(H100, SM90, load_verified(path), fastpurify.__version__, torch.__version__)
    assert order == ("cuda", "triton", "torch") and "verified on" in reason
    # the same device and versions again: replaced, not duplicated; another GPU: added
    mark_gpu_verified(["triton"], gpu=H100, capability=SM90, path=path)
    mark_gpu_verified(["cuda"], gpu="NVIDIA A100-SXM4-80GB", capability=(8, 0), path=path)
    recs = json.loads(path.read_text())["records"]
    assert len(recs) == 2 and recs[0]["backends"] == ["triton"]
    with pytest.raises(ValueError, match="non-empty subset"):
        mark_gpu_verified(["cpu"], gpu=H100, capability=SM90, path=path)


def test_shipped_record_file_is_valid():
    """The package data file exists and parses; every record names only verifiable backends."""
    assert registry.VERIFIED_PATH.exists()
    for r in load_verified():
        assert set(r["backends"]) <= set(registry.VERIFIED_ORDER) and r["gpu"] and r["capability"]


def test_cpu_priority_unchanged_and_cuda_default_is_the_reference():
    assert registry.PRIORITY["cpu"][0] == "cpu" and registry.PRIORITY["cuda"] == ("torch",)
    if not torch.cuda.is_available():
        assert registry.cuda_priority()[0] == ("torch",)
