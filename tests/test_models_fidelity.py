"""The originals' arithmetic, pinned: each port's time embedding is rounded exactly as its original computes it, and
ADM's 'math' attention is guided-diffusion's QKVAttentionLegacy (q and k scaled by d^-1/4 each, multiplied in the
torso dtype), bit for bit in fp16.  The reference formulas are re-written here from the originals' descriptions
(docs/MODELS.md gives the measured agreement with the upstream code itself)."""

import math

import numpy as np
import pytest
import torch

from fastpurify.models import load_diffusion
from fastpurify.models.adm import AttentionBlock
from fastpurify.models.layers import (attention, embedding_frequencies, set_attention_backend,
                                      sinusoidal_embedding)
from tests.model_helpers import save_state_dict, tiny


# ---------------------------------------------------------------------------------------------- time embedding
def ddpm_embedding(t, dim):
    """Ho et al. / pesser / score_sde get_timestep_embedding: a Python-float rate, rounded to fp32, times j."""
    half = dim // 2
    rate = math.log(10000) / (half - 1)
    args = t.float()[:, None] * torch.exp(torch.arange(half, dtype=torch.float32) * -rate)[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, 1)) if dim % 2 else emb


def adm_embedding(t, dim):
    """guided-diffusion timestep_embedding: exp(-ln(10000) * j / half), [cos, sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1) if dim % 2 else emb


TAUS = torch.tensor([0.0, 0.5, 13.686, 99.9, 420.0, 998.0, 999.0])


def test_the_two_roundings_really_differ():
    """Otherwise the tests below could not tell the formulas apart."""
    for half in (8, 64):
        a = embedding_frequencies(half, shift=1, rate_first=True)
        b = embedding_frequencies(half, shift=1, rate_first=False)
        assert not torch.equal(a, b) and torch.allclose(a, b, rtol=4e-6, atol=0)


@pytest.mark.parametrize("dim", [16, 32, 128, 129])
def test_sinusoidal_embedding_equals_each_originals_formula(dim):
    got = sinusoidal_embedding(TAUS, dim, shift=1, sin_first=True, rate_first=True)
    assert torch.equal(got, ddpm_embedding(TAUS, dim))
    got = sinusoidal_embedding(TAUS, dim, shift=0, sin_first=False, rate_first=False)
    assert torch.equal(got, adm_embedding(TAUS, dim))


@pytest.mark.parametrize("kind, first_layer, reference", [
    ("ncsnpp", lambda n: n.all_modules[0], ddpm_embedding),
    ("ddpm", lambda n: n.temb.dense[0], ddpm_embedding),
    ("adm", lambda n: n.time_embed[0], adm_embedding),
])
def test_each_model_feeds_its_originals_embedding(kind, first_layer, reference):
    net = tiny(kind)
    seen = []
    first_layer(net).register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    size = 16 if kind == "adm" else 8
    with torch.no_grad():
        net(torch.zeros(len(TAUS), 3, size, size), TAUS)
    want = reference(TAUS, first_layer(net).in_features)
    assert torch.equal(seen[0], want), f"{kind}: max diff {(seen[0] - want).abs().max():.3e}"


# ---------------------------------------------------------------------------------------------- rounding bounds
# Unit roundoff u of each dtype: a stored result lies within u of its exact value, relative.
U = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8, torch.float32: 2.0 ** -24, torch.float64: 2.0 ** -53}


def _gamma(n: int, u: float) -> float:
    return n * u / (1 - n * u)


def reorder_bound(q, k, v, scale, u, u_softmax):
    """Elementwise bound on |A − B| for two evaluations of softmax(scale·q kᵀ) v that differ only in the order of
    their sums (another BLAS kernel, blocking or vector width: what changes between CPUs), to first order in u.
    A length-n dot product in any order lies within γ_n·Σ|a_i·b_i| of the exact value, γ_n = n·u/(1 − n·u) (Higham,
    Accuracy and Stability of Numerical Algorithms, §3.1), so two orders lie within 2γ_n; a stored result may round
    to the neighbouring float (2u of its size).  softmax changes each p_j by at most 2·max|δl| relatively.
        logits  δl ≤ 2γ_d·scale·|q||k|ᵀ + 2u·|l|
        softmax δp ≤ p·(2·max_row δl + 2u_softmax)
        output  δo ≤ δp·|v| + 2γ_T·p|v| + 2u·|o|"""
    q, k, v = (t.double() for t in (q, k, v))
    d, T = q.shape[-1], k.shape[-2]
    logits = scale * q @ k.transpose(-1, -2)
    dl = 2 * _gamma(d, u) * scale * q.abs() @ k.abs().transpose(-1, -2) + 2 * u * logits.abs()
    p = logits.softmax(-1)
    dp = p * (2 * dl.amax(-1, keepdim=True) + 2 * u_softmax)
    return dp @ v.abs() + 2 * _gamma(T, u) * p @ v.abs() + 2 * u * (p @ v).abs()


def attention_block_bound(blk, x):
    """reorder_bound of an fp32 attention block (score_sde AttnBlockpp, DDPM AttnBlock), carried through its 1×1
    output layer W (C inputs: 2γ_C of |W||a| for the layer's own order, |W|·δa for the attention's) and the residual."""
    from fastpurify.models.ddpm_model import AttnBlock

    u, (B, C, H, W) = U[torch.float32], x.shape
    with torch.no_grad():
        if isinstance(blk, AttnBlock):
            h = blk.norm(x)
            q, k, v = (m(h) for m in (blk.q, blk.k, blk.v))
            w_out, b_out, skip = blk.proj_out.weight.reshape(C, C).t(), blk.proj_out.bias, 1.0
        else:
            h = blk.GroupNorm_0(x)
            q, k, v = (m(h) for m in (blk.NIN_0, blk.NIN_1, blk.NIN_2))
            w_out, b_out, skip = blk.NIN_3.W, blk.NIN_3.b, 1 / math.sqrt(2.0)
        q, k, v = (t.reshape(B, 1, C, H * W).transpose(-1, -2) for t in (q, k, v))
        da = reorder_bound(q, k, v, C ** -0.5, u, u)                          # (B, 1, HW, C)
        a = (torch.softmax(q.double() @ k.double().transpose(-1, -2) * C ** -0.5, -1) @ v.double()).abs()
        w = w_out.double().abs()                                             # (C_in, C_out)
        dy = da @ w + 2 * _gamma(C, u) * a @ w
        size = (a @ w).transpose(-1, -2).reshape(B, C, H, W) + b_out.double().abs()[None, :, None, None]
        dy = dy.transpose(-1, -2).reshape(B, C, H, W)
        return (dy + 4 * u * (x.double().abs() + size)) * skip  # the residual sum and the rescale round too


# ---------------------------------------------------------------------------------------------- block arithmetic
def score_sde_resblock(blk, x, temb):
    """score_sde ResnetBlockBigGANpp (fir=False, skip_rescale): naive 2×2 resampling, a division by √2."""
    def resample(z):
        B, C, H, W = z.shape
        if blk.up:
            return z.reshape(B, C, H, 1, W, 1).repeat(1, 1, 1, 2, 1, 2).reshape(B, C, 2 * H, 2 * W)
        return z.reshape(B, C, H // 2, 2, W // 2, 2).mean(dim=(3, 5)) if blk.down else z

    act = torch.nn.SiLU()
    h = resample(act(blk.GroupNorm_0(x)))
    x = resample(x)
    h = blk.Conv_0(h)
    h = h + blk.Dense_0(act(temb))[:, :, None, None]
    h = blk.Conv_1(act(blk.GroupNorm_1(h)))
    x = blk.Conv_2(x) if blk.Conv_2 is not None else x
    return (x + h) / np.sqrt(2.0)


def score_sde_attention(blk, x):
    """score_sde AttnBlockpp: einsum over channels, softmax over H·W, division by √2."""
    B, C, H, W = x.shape
    h = blk.GroupNorm_0(x)
    q, k, v = blk.NIN_0(h), blk.NIN_1(h), blk.NIN_2(h)
    w = torch.einsum("bchw,bcij->bhwij", q, k) * int(C) ** -0.5
    w = torch.softmax(w.reshape(B, H, W, H * W), dim=-1).reshape(B, H, W, H, W)
    return (x + blk.NIN_3(torch.einsum("bhwij,bcij->bchw", w, v))) / np.sqrt(2.0)


def ddpm_resblock(blk, x, temb):
    """The DDPM Model's ResnetBlock with its nonlinearity x·σ(x)."""
    def swish(z):
        return z * torch.sigmoid(z)

    h = blk.conv1(swish(blk.norm1(x)))
    h = h + blk.temb_proj(swish(temb))[:, :, None, None]
    h = blk.conv2(swish(blk.norm2(h)))
    return (x if blk.nin_shortcut is None else blk.nin_shortcut(x)) + h


def ddpm_attention(blk, x):
    """The DDPM Model's AttnBlock: two bmm's in the (B, C, HW) layout."""
    h = blk.norm(x)
    q, k, v = blk.q(h), blk.k(h), blk.v(h)
    B, C, H, W = q.shape
    w = torch.bmm(q.reshape(B, C, H * W).permute(0, 2, 1), k.reshape(B, C, H * W)) * int(C) ** -0.5
    w = torch.softmax(w, dim=2)
    return x + blk.proj_out(torch.bmm(v.reshape(B, C, H * W), w.permute(0, 2, 1)).reshape(B, C, H, W))


@pytest.mark.parametrize("kind", ["ncsnpp", "ddpm"])
def test_blocks_do_the_originals_arithmetic(kind):
    """With 'math' attention every block of the fp32 port computes the original's formula (guards the division by √2,
    the 2×2 mean's order, x·σ(x) and the conv input layout).  Residual blocks run the same kernels on the same values
    as the formula, so they agree bit for bit on any CPU.  Attention blocks reach the same products through another
    tensor layout, so the BLAS kernel (and its summation order) may differ between CPUs: they agree within
    `reorder_bound`, the rounding that a change of summation order can cause, propagated through the output layer."""
    from fastpurify.models.ddpm_model import AttnBlock, ResnetBlock
    from fastpurify.models.ncsnpp import AttnBlockpp, ResnetBlockBigGAN

    net = set_attention_backend(tiny(kind), "math")
    refs = {ResnetBlockBigGAN: score_sde_resblock, AttnBlockpp: score_sde_attention, ResnetBlock: ddpm_resblock,
            AttnBlock: ddpm_attention}
    checked = []

    def check(blk, inp, out):
        want = refs[type(blk)](blk, *inp)
        if type(blk) in (AttnBlockpp, AttnBlock):
            bound = attention_block_bound(blk, inp[0])
            assert ((out - want).abs() <= bound).all(), f"{type(blk).__name__}: {(out - want).abs().max():.3e}"
            # rounding-sized (≤ 0.1 % of the output): a wrong formula (a missing √2, a wrong scale) exceeds it
            assert bound.max() < 1e-3 * want.abs().max()
        else:
            assert torch.equal(out, want), f"{type(blk).__name__}: max diff {(out - want).abs().max():.3e}"
        checked.append(type(blk).__name__ + ("-down" if getattr(blk, "down", 0) else "-up" if getattr(blk, "up", 0)
                                             else ""))

    for m in net.modules():
        if type(m) in refs:
            m.register_forward_hook(check)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        net(torch.randn(2, 3, 8, 8, generator=g), torch.tensor([3.0, 700.0]))
    want = {"ncsnpp": {"ResnetBlockBigGAN", "ResnetBlockBigGAN-down", "ResnetBlockBigGAN-up", "AttnBlockpp"},
            "ddpm": {"ResnetBlock", "AttnBlock"}}[kind]
    assert set(checked) == want


# ---------------------------------------------------------------------------------------------- legacy attention
def legacy_attention(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """QKVAttentionLegacy in its own layout: qkv (B, heads·3·d, T) → (B, heads·d, T)."""
    B, width, T = qkv.shape
    d = width // (3 * heads)
    q, k, v = qkv.reshape(B * heads, 3 * d, T).split(d, dim=1)
    s = 1 / math.sqrt(math.sqrt(d))
    w = torch.einsum("bct,bcs->bts", q * s, k * s)
    w = torch.softmax(w.float(), dim=-1).type(w.dtype)
    return torch.einsum("bts,bcs->bct", w, v).reshape(B, heads * d, T)


def _qkv(dtype, B=2, heads=3, d=16, T=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, heads * 3 * d, T, generator=g).to(dtype)


def _split(qkv, heads):
    B, width, T = qkv.shape
    return tuple(t.transpose(-1, -2) for t in qkv.reshape(B, heads, width // heads, T).chunk(3, dim=2))


def _ours(qkv, heads, split_scale=True):
    B, _, T = qkv.shape
    return attention(*_split(qkv, heads), "math", split_scale=split_scale).transpose(-1, -2).reshape(B, -1, T)


def _legacy_bound(qkv, heads, dtype):
    """reorder_bound of the legacy formula: products in `dtype`, softmax in fp32 and cast back to `dtype`."""
    q, k, v = _split(qkv, heads)
    d = q.shape[-1]
    bound = reorder_bound(q, k, v, d ** -0.5, U[dtype], max(U[torch.float32], U[dtype]))
    B, _, T = qkv.shape
    return bound.transpose(-1, -2).reshape(B, -1, T)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_split_scale_math_is_the_legacy_formula(dtype):
    """Our layout and the legacy one reach the same products through different BLAS calls, whose summation order
    depends on the CPU (AVX-512 and AVX2 builds of MKL round differently): so they agree within `reorder_bound`,
    not bit for bit.  In fp16 the legacy rounding is what is pinned: nearly every element is bit-identical (a change
    of summation order flips a rare last bit), which the standard formula misses by far (test below)."""
    qkv, heads = _qkv(dtype), 3
    got, want = _ours(qkv, heads), legacy_attention(qkv, heads)
    assert got.dtype == dtype
    bound = _legacy_bound(qkv, heads, dtype)
    assert ((got - want).double().abs() <= bound).all(), f"max diff {(got - want).abs().max():.3e}"
    # rounding-sized (≈ 10³ ulp of the softmax's precision at most), so a wrong formula would exceed it
    assert bound.max() < 2e3 * max(U[dtype], U[torch.float32]) * want.abs().max()
    if dtype == torch.float16:
        assert (got == want).double().mean() >= 0.99


def test_fp16_standard_formula_is_not_the_legacy_rounding():
    """The fp16 criterion above can fail: scaling the logits once, after the product, differs from the legacy
    rounding in about half of the elements."""
    qkv, heads = _qkv(torch.float16), 3
    differ = (_ours(qkv, heads, split_scale=False) != legacy_attention(qkv, heads)).double().mean()
    assert differ > 0.2


def test_fp16_legacy_attention_is_within_fp16_rounding_of_fp64():
    """Against the exact value, unit-scale q, k, v: fp16 logits |l| ≲ 4 carry ~|l|·2^-11 ≈ 2e-3 rounding error
    (measured worst over these 20 draws: 1.8e-3; fp32 logits: 9.6e-4, the fp16 output rounding).  Bound 4e-3."""
    worst = 0.0
    for seed in range(20):
        qkv = _qkv(torch.float16, seed=seed)
        exact = legacy_attention(qkv.double(), 3)
        worst = max(worst, (legacy_attention(qkv, 3).double() - exact).abs().max().item())
        q, k, v = _split(qkv, 3)
        torch.testing.assert_close(attention(q, k, v, "math", split_scale=True).double(),
                                   attention(q.double(), k.double(), v.double(), "math"), atol=4e-3, rtol=0)
    assert 0 < worst < 4e-3


def test_split_scale_is_the_same_attention_in_exact_arithmetic():
    q, k, v = (torch.randn(2, 3, 17, 8, dtype=torch.float64) for _ in range(3))
    want = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    torch.testing.assert_close(attention(q, k, v, "math", split_scale=True), want)


def test_adm_fp16_attention_blocks_compute_the_legacy_formula():
    """Every AttentionBlock of the fp16 ADM, with 'math', equals x + proj_out(legacy(qkv(norm(x)))) exactly."""
    net = tiny("adm")
    net.set_dtype(torch.float16)
    blocks = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    checked = []

    def check(block, inp, out):
        x = inp[0]
        B, C, H, W = x.shape
        flat = x.reshape(B, C, H * W)
        want = flat + block.proj_out(legacy_attention(block.qkv(block.norm(flat)), block.heads))
        assert out.dtype == torch.float16 and torch.equal(out, want.reshape(B, C, H, W))
        checked.append(block)

    for b in blocks:
        b.attn_backend = "math"
        b.register_forward_hook(check)
    with torch.no_grad():
        net(torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0]))
    assert len(checked) == len(blocks) >= 3


def test_fp16_adm_loads_with_the_legacy_attention_by_default(tmp_path):
    path = save_state_dict(tiny("adm"), tmp_path / "adm.pt")
    cfg = dict(image_size=16, num_head_channels=16, sha256=False)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0])
    half = load_diffusion(path, dtype="fp16", **cfg)
    assert half.meta["attention"] == "math"
    with torch.no_grad():
        math16 = half.output(x, t)
    assert load_diffusion(path, **cfg).meta["attention"] == "sdpa"  # fp32: the fast backend
    sdpa16 = load_diffusion(path, dtype="fp16", attention="sdpa", **cfg)  # an explicit choice is kept
    assert sdpa16.meta["attention"] == "sdpa"
    with torch.no_grad():
        assert not torch.equal(sdpa16.output(x, t), math16)
