import pytest
import torch

from fastpurify import ops
from fastpurify.ops import _ext
from fastpurify.ops.reference.philox import derive_seeds, normal_ref, philox4x32, philox_bits
from tests.utils import assert_close_verbose, available_backends_for

M = 0xFFFFFFFF


@pytest.mark.parametrize("ctr, key, expected", [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M, M, M, M), (M, M), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
])
def test_philox_known_answers(ctr, key, expected):
    """Random123's published known-answer vectors for Philox4x32-10."""
    out = philox4x32(*ctr, *key)
    assert tuple(int(v) for v in out) == expected


def test_normal_statistics_and_independence():
    z = normal_ref(torch.tensor([1, 2]), (2, 200_000), step=3, purpose=1)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((z[0] * z[1]).mean())) < 0.01  # different seeds: uncorrelated streams
    # skew and kurtosis of a standard normal: 0 and 3
    assert abs(float((z ** 3).mean())) < 0.03 and abs(float((z ** 4).mean()) - 3) < 0.06


def test_streams_depend_on_every_counter_word():
    s = torch.tensor([7])
    base = normal_ref(s, (1, 64), step=0, purpose=1)
    for kw in (dict(step=1, purpose=1), dict(step=0, purpose=2), dict(step=0, purpose=1, round=1)):
        assert not torch.equal(base, normal_ref(s, (1, 64), **kw))
    assert torch.equal(base, normal_ref(s, (1, 64), step=0, purpose=1))


def test_derive_seeds_distinct_and_pure():
    a = derive_seeds(0, torch.arange(1000))
    assert len(set(a.tolist())) == 1000 and bool((a >= 0).all())
    assert torch.equal(a[10:20], derive_seeds(0, torch.arange(10, 20)))
    assert not torch.equal(a, derive_seeds(1, torch.arange(1000)))


# Sizes with tails: below one SIMD block (1, 7), around the C++ blocks of 32 and chunks of 256, across the 2048-element
# tiles (2053, 4099), and realistic images.
SIZES = [(64, 3, 32, 32), (3, 3, 17, 23), (2, 1), (2, 7), (3, 33), (2, 257), (2, 2053), (1, 4099)]


def _seeds(B):
    return derive_seeds(5, torch.arange(B)) - (1 << 62)  # include negative seeds (full 64-bit keys)


@pytest.mark.parametrize("backend", available_backends_for("philox_bits"))
@pytest.mark.parametrize("shape", SIZES)
def test_philox_words_bit_identical(backend, shape):
    """The raw words behind every backend's normals equal the reference's, bit for bit."""
    n = torch.Size(shape[1:]).numel()
    got = ops.philox_bits(_seeds(shape[0]), n, step=11, purpose=1, round=3, backend=backend)
    ref = philox_bits(_seeds(shape[0]), n, 11, 1, 3)
    for g, r in zip(got, ref):
        assert g.dtype == torch.int64 and g.shape == (shape[0], n)
        assert torch.equal(g, r), f"philox_bits[{backend}]: {int((g != r).sum())} of {r.numel()} words differ"


# Normals: the same words, then Box–Muller in float32.  The C++ kernels use their own vectorised log/cos (max error
# 1.44·2⁻²³·max(1, R) against double with R = √(−2 ln u1), measured over every u1 and u2 by tests/cpp/test_noise.cpp);
# torch's reference is within about one such unit as well, so a normal differs from it by a few ulps: ≤ 2e-6 + 2e-6·|ξ|
# (|ξ| < 5.8, 2⁻²³·5.8 = 7e-7).
@pytest.mark.parametrize("backend", available_backends_for("normal"))
@pytest.mark.parametrize("shape", SIZES)
def test_normal_backends_match_reference(backend, shape):
    seeds = _seeds(shape[0])
    got = ops.normal(seeds, shape, step=11, purpose=1, backend=backend)
    ref = normal_ref(seeds, shape, step=11, purpose=1)
    assert got.shape == shape and got.dtype == torch.float32
    assert_close_verbose(got, ref, atol=2e-6, rtol=2e-6, what=f"normal[{backend}]")


def test_normal_rejects_bad_seeds():
    with pytest.raises(ValueError, match="seeds must be an int64 tensor of shape \\(3,\\)"):
        ops.normal(torch.arange(2), (3, 4), step=0, purpose=1)
    with pytest.raises(ValueError, match="seeds must be an int64"):
        ops.normal(torch.arange(3, dtype=torch.int32), (3, 4), step=0, purpose=1)
    with pytest.raises(ValueError, match="at most 2\\^32"):
        ops.philox_bits(torch.arange(3), 2 ** 32, step=0, purpose=1)


@pytest.mark.skipif(_ext.load_error() is not None, reason="fastpurify._C not built")
def test_cpu_isa_reported():
    """(Every path's noise, bit for bit against the others: tests/test_cpu_isa.py.)"""
    assert torch.ops.fastpurify.cpu_isa() in ("baseline", "avx2", "avx512")
