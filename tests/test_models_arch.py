"""The ported architectures: parameter counts (docs/CHECKPOINTS.md), pinned numerics, cross-format equivalence, and the
inference options (attention backends, fp16/bf16 torso, channels_last)."""

import re

import pytest
import torch

from fastpurify.models.adm import ADM_256_UNCOND, ADMUNet
from fastpurify.models.classifiers import DMWideResNet, ImageNetResNet50, WideResNet
from fastpurify.models.ddpm_model import DDPM_CELEBAHQ, DDPM_CIFAR10, DDPMModel
from fastpurify.models.diffusers_unet import DiffusersUNet2D
from fastpurify.models.layers import attention, attention_backends, set_attention_backend, xformers_why_not
from fastpurify.models.ncsnpp import NCSNPP_CIFAR10, NCSNpp
from fastpurify.models.pretrained import PretrainedDiffusion
from tests.model_helpers import TINY_DIFFUSERS, tiny

# google/ddpm-cifar10-32's config.json (the DDPM CIFAR-10 model converted to diffusers).
DDPM_CIFAR10_DIFFUSERS = dict(TINY_DIFFUSERS, block_out_channels=[128, 256, 256, 256], layers_per_block=2,
                              down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
                              up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], sample_size=32)


def _count(build):
    with torch.device("meta"):
        net = build()
    return len(list(net.parameters())), sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name, build, tensors, params", [
    # docs/CHECKPOINTS.md §1: 106.6 M / 956 tensors; 552.8 M / 566; 35,746,307; 113,673,219.
    ("ncsnpp-cifar10-vp", lambda: NCSNpp(**NCSNPP_CIFAR10), 956, 106_632_579),
    ("adm-256-uncond", lambda: ADMUNet(**ADM_256_UNCOND), 566, 552_814_086),
    ("ddpm-cifar10-ema", lambda: DDPMModel(**DDPM_CIFAR10), 328, 35_746_307),
    ("ddpm-celebahq-256", lambda: DDPMModel(**DDPM_CELEBAHQ), 450, 113_673_219),
    ("diffusers ddpm-cifar10-32", lambda: DiffusersUNet2D(DDPM_CIFAR10_DIFFUSERS), 328, 35_746_307),
    # Classifiers (not in docs/CHECKPOINTS.md): WRN-28-10 36.5 M (Zagoruyko & Komodakis), WRN-70-16 267 M (Gowal et
    # al. / RobustBench), ResNet-50 25,557,032 (torchvision's own module, built beside ours in the next test).
    ("WRN-28-10 (RobustBench Standard)", lambda: WideResNet(28, 10), 80, 36_479_194),
    ("WRN-70-16 (DMWideResNet)", lambda: DMWideResNet(70, 16), 206, 266_796_506),
    ("ResNet-50 (torchvision)", lambda: ImageNetResNet50(), 161, 25_557_032),
])
def test_parameter_counts_match_checkpoints_md(name, build, tensors, params):
    assert _count(build) == (tensors, params), name


def test_ncsnpp_has_91_modules_in_the_original_order():
    with torch.device("meta"):
        net = NCSNpp(**NCSNPP_CIFAR10)
    assert len(net.all_modules) == 91
    names = [n for n, _ in net.named_parameters()]
    # parameters() order = registration order, which the positional EMA list follows.
    assert names[:6] == ["all_modules.0.weight", "all_modules.0.bias", "all_modules.1.weight", "all_modules.1.bias",
                         "all_modules.2.weight", "all_modules.2.bias"]
    assert [n.split(".", 2)[2] for n in names[6:18]] == [
        "GroupNorm_0.weight", "GroupNorm_0.bias", "Conv_0.weight", "Conv_0.bias", "Dense_0.weight", "Dense_0.bias",
        "GroupNorm_1.weight", "GroupNorm_1.bias", "Conv_1.weight", "Conv_1.bias", "GroupNorm_0.weight",
        "GroupNorm_0.bias"]
    # Level 0: 8 resblocks (3–10) and a down-resblock (11); level 1 (16×16, attention) starts at 12.
    assert type(net.all_modules[13]).__name__ == "AttnBlockpp" and net.all_modules[13].NIN_0.W.shape == (256, 256)
    assert names[-4:] == ["all_modules.89.weight", "all_modules.89.bias", "all_modules.90.weight",
                          "all_modules.90.bias"]


# Golden numbers: sum and |sum| of each tiny model's output on fixed inputs, at randomize_ seed 0.  They change only
# when the numerics change (the ports were checked against the upstream code; see docs/MODELS.md).
GOLDEN = {"ncsnpp": (8, [0.5, 99.9, 998.0], 46.736673856154084, 202.0501367431134),
          "adm": (16, [0.0, 150.0, 999.0], 86.6497701574117, 1754.2618878576905),
          "ddpm": (8, [0.0, 150.0, 999.0], 98.4589690901339, 202.81203916668892),
          "diffusers": (8, [0.0, 150.0, 999.0], 114.63138005509973, 235.03075834736228)}


@pytest.mark.parametrize("kind", sorted(GOLDEN))
def test_tiny_model_output_is_pinned(kind):
    size, tau, s, a = GOLDEN[kind]
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = tiny(kind)(x, torch.tensor(tau)).double()
    assert y.abs().max() > 0.1  # non-trivial output (no zero-initialised head left)
    assert y.sum().item() == pytest.approx(s, rel=1e-4, abs=1e-3) and y.abs().sum().item() == pytest.approx(a, rel=1e-4)


def _ddpm_to_diffusers(sd: dict, levels: int) -> dict:
    """docs/CHECKPOINTS.md §5 (diffusers' convert_ddpm_original_checkpoint_to_diffusers.py mapping)."""
    rules = [(r"^temb\.dense\.0\.", "time_embedding.linear_1."), (r"^temb\.dense\.1\.", "time_embedding.linear_2."),
             (r"^norm_out\.", "conv_norm_out."), (r"^down\.(\d+)\.block\.", r"down_blocks.\1.resnets."),
             (r"^down\.(\d+)\.attn\.", r"down_blocks.\1.attentions."),
             (r"^down\.(\d+)\.downsample\.", r"down_blocks.\1.downsamplers.0."),
             (r"^mid\.block_1\.", "mid_block.resnets.0."), (r"^mid\.block_2\.", "mid_block.resnets.1."),
             (r"^mid\.attn_1\.", "mid_block.attentions.0."), (r"\.temb_proj\.", ".time_emb_proj."),
             (r"\.nin_shortcut\.", ".conv_shortcut."), (r"\.norm\.", ".group_norm."), (r"\.q\.", ".to_q."),
             (r"\.k\.", ".to_k."), (r"\.v\.", ".to_v."), (r"\.proj_out\.", ".to_out.0.")]
    out = {}
    for k, v in sd.items():
        m = re.match(r"^up\.(\d+)\.(block|attn|upsample)\.", k)
        if m:  # up.L is indexed by level; up_blocks by execution order
            new = {"block": "resnets.", "attn": "attentions.", "upsample": "upsamplers.0."}[m[2]]
            k = f"up_blocks.{levels - 1 - int(m[1])}.{new}" + k[m.end():]
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v[:, :, 0, 0] if (".to_" in k and v.dim() == 4) else v
    return out


def test_ddpm_model_and_diffusers_unet_agree_through_the_documented_conversion():
    """Two independent ports, one conversion table: equal outputs check both (and the table)."""
    ddpm = tiny("ddpm")
    uni = DiffusersUNet2D(TINY_DIFFUSERS).eval()
    uni.load_state_dict(_ddpm_to_diffusers(ddpm.state_dict(), 2), strict=True)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5.0, 700.0])
    with torch.no_grad():
        torch.testing.assert_close(uni(x, t), ddpm(x, t), atol=2e-6, rtol=1e-5)


def _wrapped(kind):
    net = tiny(kind)
    size = {"ncsnpp": 8, "adm": 16, "ddpm": 8, "diffusers": 8}[kind]
    return PretrainedDiffusion(net, image_size=size, channels=3, time_input="index"), size


@pytest.mark.parametrize("kind", ["ncsnpp", "adm", "ddpm", "diffusers"])
def test_attention_backends_and_channels_last_match_fp32(kind):
    m, size = _wrapped(kind)
    x, t = torch.randn(2, 3, size, size), torch.tensor([10.0, 600.0])
    with torch.no_grad():
        ref = m(x, t)
        m.set_attention("math")
        torch.testing.assert_close(m(x, t), ref, atol=1e-5, rtol=1e-5)
        m.set_attention("sdpa").set_channels_last(True)
        y = m(x, t)
    assert y.is_contiguous() and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["ncsnpp", "adm", "ddpm", "diffusers"])
@pytest.mark.parametrize("dtype, tol", [("bf16", 5e-2), ("fp16", 1e-2)])
def test_low_precision_torso_is_close_to_fp32(kind, dtype, tol):
    """Relative L2 error of the fp16 / bf16 torso against fp32 (bf16 has an 8-bit mantissa: ≈ 2⁻⁸ per op)."""
    m, size = _wrapped(kind)
    x, t = torch.randn(2, 3, size, size), torch.tensor([10.0, 600.0])
    with torch.no_grad():
        ref = m(x, t)
        y = m.set_precision(dtype)(x, t)
    assert y.dtype == torch.float32
    # Purifier takes its working dtype from the first parameter: the time MLP, which stays fp32.
    assert next(m.parameters()).dtype == torch.float32
    rel = ((y - ref).norm() / ref.norm()).item()
    assert 0 < rel < tol, f"{kind} {dtype}: relative error {rel:.2e}"


def test_adm_fp16_is_guided_diffusions_convert_to_fp16():
    """Torso convs fp16; time_embed, the emb_layers Linears, norms and the out head fp32 (docs/CHECKPOINTS.md §3)."""
    net = tiny("adm")
    net.set_dtype(torch.float16)
    dt = {k: v.dtype for k, v in net.state_dict().items()}
    torso = ("input_blocks.0.0.weight", "middle_block.1.qkv.weight", "output_blocks.0.0.in_layers.2.weight")
    assert {dt[k] for k in torso} == {torch.float16}
    assert {dt[k] for k in dt if k.startswith(("time_embed", "out.")) or "emb_layers" in k or "norm" in k
            or ".in_layers.0." in k or ".out_layers.0." in k} == {torch.float32}
    net.set_dtype(torch.float32)
    assert {v.dtype for v in net.state_dict().values()} == {torch.float32}


def test_attention_math_matches_the_definition():
    q, k, v = (torch.randn(2, 3, 17, 8, dtype=torch.float64) for _ in range(3))
    want = torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1) @ v
    for backend in ("sdpa", "math"):
        torch.testing.assert_close(attention(q, k, v, backend), want)


def test_xformers_backend_unavailable_says_why_or_matches_sdpa():
    why = xformers_why_not()
    assert attention_backends()["xformers"] == why
    net = tiny("ddpm")
    if why is not None:
        assert "not installed" in why
        with pytest.raises(RuntimeError, match="xformers.*unavailable: xformers is not installed"):
            set_attention_backend(net, "xformers")
        with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
            set_attention_backend(net, "flash")
        pytest.skip(f"xformers backend: {why}")
    x, t = torch.randn(1, 3, 8, 8), torch.tensor([3.0])
    with torch.no_grad():
        ref = net(x, t)
        torch.testing.assert_close(set_attention_backend(net, "xformers")(x, t), ref, atol=1e-4, rtol=1e-4)
