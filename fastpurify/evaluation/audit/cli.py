"""`fastpurify audit SPEC [--data digits] [--n N] [--eps E] [--norm linf|l2] [--out DIR]`: audit a user's defence.

SPEC: 'package.module:function' (importable from the current directory or PYTHONPATH) or 'path/to/file.py:function';
the function returns (classifier, purifier) — two nn.Modules on [0, 1] NCHW images — or one nn.Module doing both.
Writes DIR/report.json (top-level 'verdict': "reliable …" or "not reliable: …"), DIR/report.md, DIR/grid.png
(rows: clean / adversarial / purified adversarial) and, with matplotlib, accuracy_vs_steps.png and
gradient_consistency.png, all or nothing.  See docs/AUDIT.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from . import plots
from . import report as report_io
from .blackbox import AuditError
from .run import audit


def _grid_writer(x, x_adv, defence_purifier, k=16):
    k = min(k, len(x))
    from ...imageio import image_grid, write_png

    def write(path):
        with torch.no_grad():
            shown = defence_purifier(x_adv[:k], seed=torch.arange(k))
        rows = [x[:k], x_adv[:k]] + ([shown] if shown.shape == x[:k].shape else [])
        write_png(path, image_grid(rows, scale=4))
    return write


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastpurify audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="package.module:function or path/to/file.py:function")
    p.add_argument("--data", default="digits", help="digits | cifar10:PATH | cifar100:PATH")
    p.add_argument("--n", type=int, default=32, help="images (the first n of the test split)")
    p.add_argument("--eps", type=float, default=0.15, help="radius on the [0, 1] scale")
    p.add_argument("--norm", choices=("linf", "l2"), default="linf")
    p.add_argument("--steps", type=int, default=20, help="iterations of every attack")
    p.add_argument("--n-eval", type=int, default=8, help="report draws per candidate (N)")
    p.add_argument("--n-select", type=int, default=4, help="selection draws per candidate (S)")
    p.add_argument("--max-eot", type=int, default=32, help="most EOT draws per step the audit may spend")
    p.add_argument("--surrogate", default=None, help="SPEC of a surrogate purifier (one module, or a pair whose "
                   "purifier is used): a transfer attack through it, checked against exact PGD")
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
                  n_select=a.n_select, max_eot=a.max_eot, seed=a.seed, batched=a.batched, surrogate=a.surrogate,
                  log=lambda m: print(m, file=sys.stderr))
        figures, r["plots"] = plots.writers(r)
        report_io.write(r, a.out, {"grid.png": _grid_writer(r["_x"], r["_x_adv"], r["_purifier"]), **figures})
    except AuditError as e:
        print(f"fastpurify audit: error: {e}", file=sys.stderr)
        return 2
    print(r["verdict"])
    print(f"wrote {a.out}: report.json, report.md, grid.png" + "".join(f", {f}" for f in figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
