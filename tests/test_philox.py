import pytest
import torch

from fastpurify import ops
from fastpurify.ops.reference.philox import derive_seeds, normal_ref, philox4x32
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


@pytest.mark.parametrize("backend", available_backends_for("normal"))
@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (3, 3, 17, 23)])
def test_normal_backends_match_reference(backend, shape):
    """Same Philox words in every backend; Box–Muller's log/cos may differ by an ulp between libms."""
    seeds = derive_seeds(5, torch.arange(shape[0])) - (1 << 62)  # include negative seeds (full 64-bit keys)
    got = ops.normal(seeds, shape, step=11, purpose=1, backend=backend)
    ref = normal_ref(seeds, shape, step=11, purpose=1)
    assert got.shape == shape and got.dtype == torch.float32
    assert_close_verbose(got, ref, atol=2e-6, rtol=2e-6, what=f"normal[{backend}]")
