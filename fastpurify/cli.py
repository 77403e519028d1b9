"""The `fastpurify` command: `demo`, `compare`, `sweep`, `train-digits`, `train-aux`, `info`."""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": ("fastpurify.evaluation.demo", "attack and purify on the embedded digits models; writes report.json and grid.png"),
    "compare": ("fastpurify.evaluation.compare", "none / diffpure / gdmp / agdm / multiround under the same attack (digits)"),
    "sweep": ("fastpurify.evaluation.sweep", "methods × attack ensemble over many images; torchrun-sharded, "
              "resumable; status and report"),
    "train-digits": ("fastpurify.training.train_digits", "retrain the embedded digits DDPM and classifier"),
    "train-aux": ("fastpurify.training.train_aux", "TRADES-train the auxiliary network for adversarial guidance (AGDM)"),
    "audit": ("fastpurify.evaluation.audit.cli", "audit any defence (your nn.Modules): attacks, masking checks, a verdict"),
    "info": ("fastpurify.info", "versions, build and available backends (--json)"),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: fastpurify COMMAND [options]\n\ncommands:")
        for name, (_, helptext) in COMMANDS.items():
            print(f"  {name:14s} {helptext}")
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    import importlib

    return importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
