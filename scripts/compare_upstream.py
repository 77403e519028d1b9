"""Measure how closely fastpurify's diffusion ports agree with the original code (docs/MODELS.md, "How the ports
were checked").  Not part of the test suite: it needs a checkout of NVlabs/DiffPure, which carries the three
originals (score_sde's NCSN++, SDEdit/DiffPure's DDPM `Model` in ddpm/unet_ddpm.py, guided-diffusion's `UNetModel`).

    flock /work/cpu.lock timeout 900 python scripts/compare_upstream.py --diffpure /path/to/DiffPure

Each original is built with random non-trivial weights (zero-initialised layers included), saved in its own on-disk
layout, loaded with `fastpurify.load_diffusion`, and both forwards run on the same inputs; the table gives
max |ours − original| and, for scale, max |original|.  score_sde's CUDA `op` package is not imported (the DDPM++
config uses fir=False, so it is never called).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace as NS

import torch

import fastpurify


def randomize_(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Fan-in-scaled normal weights, 1 + small noise for norm scales, small normals for other 1-D tensors."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in net.modules():
            for name, p in mod.named_parameters(recurse=False):
                if isinstance(mod, torch.nn.GroupNorm) and name == "weight":
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                elif p.dim() > 1:
                    fan_in = p.shape[0] if name == "W" else p[0].numel()  # score_sde's NIN keeps W as (in, out)
                    p.copy_(torch.randn(p.shape, generator=g) * (0.8 / fan_in ** 0.5))
                else:
                    p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval().requires_grad_(False)


def import_originals(root: Path):
    sys.path.insert(0, str(root))
    sys.modules["score_sde.op"] = types.ModuleType("score_sde.op")  # CUDA-only, unused with fir=False
    sys.modules["score_sde.op"].upfirdn2d = None
    from ddpm.unet_ddpm import Model
    from guided_diffusion.unet import UNetModel
    from score_sde.models.ncsnpp import NCSNpp
    return Model, NCSNpp, UNetModel


def ddpm_config(full: bool):
    model = dict(ch=128, out_ch=3, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
                 in_channels=3, resamp_with_conv=True, var_type="fixedlarge", ema_rate=0.9999, ema=True)
    if not full:
        model.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    return NS(model=NS(**model), data=NS(image_size=32 if full else 8, channels=3))


def ncsnpp_config(full: bool):
    model = dict(nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=8, attn_resolutions=(16,), dropout=0.1,
                 resamp_with_conv=True, conditional=True, fir=False, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
                 resblock_type="biggan", progressive="none", progressive_input="none", progressive_combine="sum",
                 embedding_type="positional", init_scale=0.0, fourier_scale=16, scale_by_sigma=False,
                 nonlinearity="swish", sigma_min=0.01, sigma_max=50, num_scales=1000, beta_min=0.1, beta_max=20.0,
                 name="ncsnpp")
    if not full:
        model.update(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    return NS(model=NS(**model), data=NS(image_size=32 if full else 8, num_channels=3, centered=True),
              training=NS(continuous=True))


def adm_config(full: bool, size: int):
    """The 256×256 uncond architecture (every module and weight shape), fed size×size to keep the CPU cost small
    (at 32×32 the deepest level is 1×1)."""
    if full:
        return dict(image_size=size, in_channels=3, model_channels=256, out_channels=6, num_res_blocks=2,
                    attention_resolutions=(8, 16, 32), channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
                    use_scale_shift_norm=True, resblock_updown=True)
    return dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=16, use_scale_shift_norm=True,
                resblock_updown=True)


def diff(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    return {"max_abs_diff": (ours.double() - ref.double()).abs().max().item(), "max_abs_ref": ref.abs().max().item()}


def measure(root: Path, full: bool, batch: int, out: Path, models=("ddpm", "ncsnpp", "adm"),
            adm_input: int = 64) -> dict:
    Model, NCSNppOrig, UNetModel = import_originals(root)
    g = torch.Generator().manual_seed(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        tmp = Path(tmp)
        if "ddpm" in models:
            # DDPM Model (ema_diffusion_cifar10_model / celeba_hq.ckpt layout: a plain state_dict)
            cfg = ddpm_config(full)
            orig = randomize_(Model(cfg), seed=2)
            torch.save(orig.state_dict(), tmp / "ddpm.ckpt")
            n = cfg.data.image_size
            x = torch.randn(batch, 3, n, n, generator=g)
            t = torch.tensor([0.0, 13.0, 420.0, 999.0, 13.686, 99.9])[:batch]
            ref = orig(x, t)
            for attn in ("sdpa", "math"):
                ours = fastpurify.load_diffusion(tmp / "ddpm.ckpt", sha256=False, resolution=n, attention=attn)
                rows[f"ddpm {attn}"] = diff(ours(x, t), ref)

        if "ncsnpp" in models:
            # NCSN++ (checkpoint_8.pth layout: DataParallel 'model' + EMA shadow list), continuous τ = 999·s
            cfg = ncsnpp_config(full)
            orig = randomize_(NCSNppOrig(cfg), seed=3)
            model_sd = {f"module.{k}": v for k, v in orig.state_dict().items()}
            torch.save({"model": model_sd, "ema": {"decay": 0.9999, "num_updates": 1,
                                                   "shadow_params": [p.clone() for p in orig.parameters()]},
                        "step": 1}, tmp / "checkpoint.pth")
            n = cfg.data.image_size
            x = torch.randn(batch, 3, n, n, generator=g)
            t = 999.0 * torch.tensor([1e-3, 0.05, 0.1, 0.5, 0.137, 1.0])[:batch]
            ref = orig(x, t)
            for attn in ("sdpa", "math"):
                ours = fastpurify.load_diffusion(tmp / "checkpoint.pth", sha256=False, image_size=n, attention=attn)
                rows[f"ncsnpp {attn}"] = diff(ours(x, t), ref)

        if "adm" in models:
            # ADM (256x256_diffusion_uncond.pt layout), fp32 and guided-diffusion's convert_to_fp16
            cfg = adm_config(full, adm_input)
            orig = randomize_(UNetModel(**cfg), seed=4)
            torch.save(orig.state_dict(), tmp / "adm.pt")
            n = cfg["image_size"]
            x, t = torch.randn(batch, 3, n, n, generator=g), torch.tensor([0.0, 13.0, 150.0, 999.0, 1.0, 500.0])[:batch]
            ref32 = orig(x, t)
            kw = dict(sha256=False, image_size=n, num_head_channels=cfg["num_head_channels"])
            for attn in ("sdpa", "math"):
                ours = fastpurify.load_diffusion(tmp / "adm.pt", attention=attn, **kw)
                rows[f"adm fp32 {attn}"] = diff(ours.output(x, t), ref32)
            orig16 = randomize_(UNetModel(**cfg, use_fp16=True), seed=4)
            orig16.convert_to_fp16()
            ref16 = orig16(x, t).float()
            for attn in ("math", "sdpa"):  # math is the fp16 default
                ours16 = fastpurify.load_diffusion(tmp / "adm.pt", dtype="fp16", attention=attn, **kw).output(x, t)
                rows[f"adm fp16 {attn}"] = {**diff(ours16, ref16),
                                            "vs_fp32_original": diff(ours16, ref32)["max_abs_diff"]}
            rows["adm fp16 original vs fp32 original"] = diff(ref16, ref32)
    result = {"size": "full" if full else "tiny", "batch": batch, "torch": torch.__version__, "rows": rows,
              "adm_input": adm_config(full, adm_input)["image_size"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--diffpure", type=Path, required=True, help="root of an NVlabs/DiffPure checkout")
    p.add_argument("--size", choices=("tiny", "full", "both"), default="both")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--models", default="ddpm,ncsnpp,adm")
    p.add_argument("--adm-input", type=int, default=32, help="input size for the full-size ADM architecture")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu/models_vs_upstream"))
    a = p.parse_args(argv)
    torch.set_num_threads(2)
    for full in {"tiny": [False], "full": [True], "both": [False, True]}[a.size]:
        name = f"{'full' if full else 'tiny'}-{a.models.replace(',', '-')}.json"
        res = measure(a.diffpure, full, a.batch, a.out / name,
                      a.models.split(","), a.adm_input)
        print(f"-- {res['size']} (batch {res['batch']})")
        for name, r in res["rows"].items():
            extra = f"   vs fp32 original {r['vs_fp32_original']:.2e}" if "vs_fp32_original" in r else ""
            print(f"{name:38s} max|Δ| {r['max_abs_diff']:.2e}   max|ref| {r['max_abs_ref']:.2f}{extra}")


if __name__ == "__main__":
    main()
