"""`fastpurify train-aux`: the TRADES-trained auxiliary network φ for adversarial guidance (AGDM) on digits.

Same architecture as the embedded classifier (SmallCNN), trained on the train split with TRADES; the card records
its clean and PGD accuracy next to those of the standard classifier, so the gain from TRADES is measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ..zoo import embedded as D
from .trades import TradesConfig, pgd_accuracy, train_trades

FEATURE_LAYER = "features"  # penultimate features (flattened conv features, 256-d), recorded in the card


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastpurify train-aux", description=__doc__)
    p.add_argument("--out", default=str(D.WEIGHTS_DIR))
    p.add_argument("--beta", type=float, default=6.0)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    from pathlib import Path

    from safetensors.torch import save_file

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    cfg = TradesConfig(beta=a.beta, eps=a.eps, step_size=a.eps / 4, epochs=a.epochs, seed=a.seed)
    x, y = D.load_split("train")
    from tqdm import tqdm

    bar = tqdm(total=cfg.epochs, desc="TRADES", file=sys.stderr)
    t0 = time.time()
    aux = train_trades(D.build_classifier(), x, y, cfg, progress=lambda e: bar.update(1))
    bar.close()
    seconds = time.time() - t0
    save_file(aux.requires_grad_(False).state_dict(), str(out / "digits_aux.safetensors"))
    xv, yv = D.load_split("val")
    standard = D.digits().classifier
    metrics = {}
    for name, net in (("aux_trades", aux), ("standard_classifier", standard)):
        with torch.no_grad():
            clean = float((net(xv).argmax(1) == yv).float().mean())
        metrics[name] = {"val_clean_acc": clean,
                         "val_pgd20_acc": pgd_accuracy(net, xv, yv, eps=cfg.eps, steps=20)}
    card = {"command": "fastpurify train-aux " + " ".join(argv if argv is not None else sys.argv[1:]),
            "arch": "SmallCNN", "config": D.CNN_CONFIG, "feature_layer": FEATURE_LAYER,
            "trades": cfg.as_dict(), "train_seconds": round(seconds, 1), "threads": a.threads,
            "metrics": metrics, "pgd": f"linf eps {cfg.eps}, 20 steps, step {2.5 * cfg.eps / 20:.4g}, no random start"}
    (out / "digits_aux_card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
