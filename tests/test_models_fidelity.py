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
def test_blocks_do_the_originals_arithmetic_bit_for_bit(kind):
    """With 'math' attention every residual and attention block of the fp32 port equals the original's formula
    exactly (guards the division by √2, the 2×2 mean's order, x·σ(x) and the conv input layout)."""
    from fastpurify.models.ddpm_model import AttnBlock, ResnetBlock
    from fastpurify.models.ncsnpp import AttnBlockpp, ResnetBlockBigGAN

    net = set_attention_backend(tiny(kind), "math")
    refs = {ResnetBlockBigGAN: score_sde_resblock, AttnBlockpp: score_sde_attention, ResnetBlock: ddpm_resblock,
            AttnBlock: ddpm_attention}
    checked = []

    def check(blk, inp, out):
        want = refs[type(blk)](blk, *inp)
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


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_split_scale_math_is_the_legacy_formula_bit_for_bit(dtype):
    qkv, heads = _qkv(dtype), 3
    got = attention(*_split(qkv, heads), "math", split_scale=True)
    B, _, T = qkv.shape
    got = got.transpose(-1, -2).reshape(B, -1, T)
    assert got.dtype == dtype
    assert torch.equal(got, legacy_attention(qkv, heads))


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
