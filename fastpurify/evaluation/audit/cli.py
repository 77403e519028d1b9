"""`fastpurify audit SPEC [--data digits] [--n N] [--eps E] [--norm linf|l2] [--out DIR]`: audit a user's defence.

SPEC: 'package.module:function' (importable from the current directory or PYTHONPATH) or 'path/to/file.py:function';
the function returns (classifier, purifier) — two nn.Modules on [0, 1] NCHW images — or one nn.Module doing both.
--data: digits, cifar10:PATH, cifar100:PATH (test split, first n) or imagenet:PATH (an ImageFolder tree of synset
folders, labels = ImageNet-1k class indices, resized 256 / cropped 224, n seeded ids).
Writes DIR/report.json (top-level 'verdict': "reliable …" or "not reliable: …"; 'eps_curve': robust accuracy at
--eps-curve multiples of ε with 95 % Wilson intervals), DIR/report.md, DIR/grid.png (rows: clean / adversarial /
purified adversarial; with matplotlib each column titled with the true label and the clean and adversarial
predictions on report draw 0) and, with matplotlib, accuracy_vs_steps.png, accuracy_vs_eps.png and
gradient_consistency.png, all or nothing.  See docs/AUDIT.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import plots
from . import report as report_io
from ..protocol import ESCALATE
from .blackbox import AuditError
from .run import audit


def _grid_writer(report, k=16):
    """The unlabelled grid (no matplotlib: plots.writers then gives no 'grid.png' of its own)."""
    from ...imageio import image_grid, write_png

    def write(path):
        g = plots.grid_samples(report, k)
        write_png(path, image_grid([g["clean"], g["adversarial"]] + ([g["purified"]] if g["purified"] is not None
                                                                     else []), scale=4))
    return write


def _multiples(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise AuditError(f"--eps-curve {text!r}: expected comma-separated numbers, e.g. 0.25,0.5,2") from None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastpurify audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="package.module:function or path/to/file.py:function")
    p.add_argument("--data", default="digits", help="digits | cifar10:PATH | cifar100:PATH (cifar-10-batches-py / "
                   "cifar-100-python folder) | imagenet:PATH (ImageFolder tree of ImageNet-1k synset folders)")
    p.add_argument("--n", type=int, default=32, help="images (the first n of the test split)")
    p.add_argument("--eps", type=float, default=0.15, help="radius on the [0, 1] scale")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--steps", type=int, default=20, help="iterations of every attack")
    p.add_argument("--n-eval", type=int, default=8, help="report draws per candidate (N)")
    p.add_argument("--n-select", type=int, default=4, help="selection draws per candidate (S)")
    p.add_argument("--max-eot", type=int, default=32, help="most EOT draws per step the audit may spend")
    p.add_argument("--surrogate", default=None, help="SPEC of a surrogate purifier (one module, or a pair whose "
                   "purifier is used): a transfer attack through it, checked against exact PGD")
    p.add_argument("--transfer-from", default=None, help="SPEC of a classifier (one module, or a pair whose "
                   "classifier is used) whose adversarial images are transferred, e.g. the defence's own guidance "
                   "network: checked against exact PGD")
    p.add_argument("--eps-curve", default="0.25,0.5,2", help="radii of the robust-accuracy-vs-ε curve as "
                   "multiples of --eps, comma-separated ('' = off); the strongest exact attack is rerun at each")
    p.add_argument("--escalate", type=int, default=ESCALATE, help="rerun an exact attack whose paired convergence "
                   "check fails with twice the steps, at most this often")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batched", action="store_true", help="run a randomised batch-independent module on whole "
                   "batches seeded per call (faster; a sample's draws then depend on its batch)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("audit-out"))
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        if a.out.exists() and (not a.out.is_dir() or any(a.out.iterdir())):  # refuse before the work, not after
            raise AuditError(f"--out {a.out} exists and is not an empty folder: choose a new one")
        r = audit(a.spec, data=a.data, n=a.n, eps=a.eps, norm=a.norm, steps=a.steps, n_reevals=a.n_eval,
                  n_select=a.n_select, max_eot=a.max_eot, seed=a.seed, escalate=a.escalate, batched=a.batched,
                  surrogate=a.surrogate, transfer_from=a.transfer_from,
                  eps_curve=_multiples(a.eps_curve),
                  log=lambda m: print(m, file=sys.stderr))
        figures, r["plots"] = plots.writers(r)
        report_io.write(r, a.out, {"grid.png": _grid_writer(r), **figures})  # figures: the labelled grid
    except AuditError as e:
        print(f"fastpurify audit: error: {e}", file=sys.stderr)
        return 2
    print(r["verdict"])
    print(f"wrote {a.out}: report.json, report.md, " + ", ".join(sorted({"grid.png", *figures})))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
