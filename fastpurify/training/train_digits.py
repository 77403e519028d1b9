"""`fastpurify train-digits`: train the embedded digits DDPM and classifier from scratch, write safetensors + card.

Reproducible: every random choice comes from `--seed`; the data split is fixed (fastpurify/zoo/embedded.py).
On 2 CPU cores the default budget takes about 20 minutes (measured numbers are written into the card).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..zoo import embedded as D


def _progress(it, total, desc):
    try:
        from tqdm import tqdm

        return tqdm(it, total=total, desc=desc, mininterval=2.0, file=sys.stderr)
    except ImportError:  # tqdm is a declared dependency; this keeps the trainer usable without it
        return it


def train_classifier(seed: int, epochs: int = 40, batch: int = 64, lr: float = 1e-3) -> tuple[torch.nn.Module, dict]:
    """Adam on the train split with ±1-pixel random shifts; returns the model and its held-out metrics."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = D.load_split("train")
    model = D.build_classifier()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * ((len(x) + batch - 1) // batch))
    for _ in _progress(range(epochs), epochs, "classifier"):
        perm = torch.randperm(len(x), generator=g)
        for b in range(0, len(x), batch):
            idx = perm[b:b + batch]
            xb = _random_shift(x[idx], g)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    metrics = {}
    with torch.no_grad():
        for split in ("val", "test"):
            xs, ys = D.load_split(split)
            metrics[f"{split}_acc"] = float((model(xs).argmax(1) == ys).float().mean())
    return model, metrics


def _random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 1) -> torch.Tensor:
    """Shift each image by up to ±max_shift pixels (zero fill), a light augmentation for 1,257 images."""
    pad = F.pad(x, [max_shift] * 4)
    h, w = x.shape[-2:]
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, x.shape[0]), generator=g).tolist()
    return torch.stack([pad[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(zip(dy, dx))])


def train_ddpm(seed: int, steps: int = 8000, batch: int = 128, lr: float = 2e-3, ema_decay: float = 0.999):
    """ε-prediction DDPM (linear β, T = 1000) on the train split; returns the EMA network and loss history."""
    g = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    x, _ = D.load_split("train")
    u = 2.0 * x - 1.0
    net = D.build_unet()
    ema = copy.deepcopy(net).requires_grad_(False)
    abar = D.EpsDiffusion(net, image_size=D.IMAGE_SIZE, channels=D.CHANNELS).schedule.alphas_cumprod.float()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    warmup = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(k / steps * torch.pi)).item()))
    losses = []
    for k in _progress(range(steps), steps, "ddpm"):
        idx = torch.randint(0, len(u), (batch,), generator=g)
        u0 = u[idx]
        t = torch.randint(0, 1000, (batch,), generator=g)
        z = torch.randn(u0.shape, generator=g)
        a = abar[t][:, None, None, None]
        ut = a.sqrt() * u0 + (1 - a).sqrt() * z
        loss = F.mse_loss(net(ut, t.float()), z)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1.0 - ema_decay)
        losses.append(loss.item())
    return ema.eval(), losses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastpurify train-digits", description=__doc__)
    p.add_argument("--out", type=Path, default=D.WEIGHTS_DIR, help="output folder (default: the package's weights)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ddpm-steps", type=int, default=8000)
    p.add_argument("--classifier-epochs", type=int, default=40)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (results were produced with 2)")
    p.add_argument("--card-only", action="store_true", help="skip training; rebuild the card from saved weights")
    args = p.parse_args(argv)
    from safetensors.torch import save_file

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    card_path = args.out / "digits_card.json"
    card = json.loads(card_path.read_text()) if card_path.exists() and args.card_only else {}
    if not args.card_only:
        t0 = time.time()
        clf, clf_metrics = train_classifier(args.seed, epochs=args.classifier_epochs)
        t_clf = time.time() - t0
        save_file(clf.state_dict(), str(args.out / "digits_classifier.safetensors"))
        print(f"classifier: {clf_metrics} in {t_clf:.0f}s", file=sys.stderr)
        t0 = time.time()
        net, losses = train_ddpm(args.seed, steps=args.ddpm_steps)
        t_ddpm = time.time() - t0
        save_file(net.state_dict(), str(args.out / "digits_ddpm.safetensors"))
        tail = losses[-500:]
        card = {
            "command": "fastpurify train-digits " + " ".join(argv if argv is not None else sys.argv[1:]),
            "seed": args.seed, "threads": args.threads,
            "data": {"source": "sklearn.datasets.load_digits", "image_size": D.IMAGE_SIZE,
                     "upsampling": "bilinear, align_corners=False, from 8x8; values/16",
                     "split": {"rule": "stratified train_test_split, random_state=0: test 20%, then val 12.5% of rest",
                               **{k: len(v) for k, v in D.split_indices().items()}}},
            "classifier": {"arch": "SmallCNN", "config": D.CNN_CONFIG, "epochs": args.classifier_epochs,
                           "params": sum(q.numel() for q in clf.parameters()), **clf_metrics,
                           "train_seconds": round(t_clf, 1)},
            "ddpm": {"arch": "SmallUNet", "config": {**D.UNET_CONFIG, "mults": list(D.UNET_CONFIG["mults"])},
                     "schedule": "linear beta 1e-4..0.02, T=1000, eps-prediction", "steps": args.ddpm_steps,
                     "batch": 128, "ema": 0.999, "params": sum(q.numel() for q in net.parameters()),
                     "final_loss_mean_last500": sum(tail) / len(tail), "train_seconds": round(t_ddpm, 1)},
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        }
    from .card import add_sample_grid

    card.update(add_sample_grid(args.out, seed=args.seed))
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
