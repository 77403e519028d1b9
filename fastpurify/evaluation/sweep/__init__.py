"""`fastpurify sweep`: many methods × an attack ensemble over thousands of images, sharded over torchrun ranks,
resumable after a crash, merged and reported (docs/CONVENTIONS.md §3).

    fastpurify sweep CONFIG.toml [--set key=value ...]     run (alone, or under torchrun / Slurm env variables)
    torchrun --nproc_per_node K -m fastpurify sweep CONFIG.toml
    fastpurify sweep check CONFIG.toml                     open the data, load the models, build every defence;
                                                           print the resolved config, or each problem (rc 2)
    fastpurify sweep status DIR                            done / pending per method, each attempt live or dead
    fastpurify sweep report DIR [--partial]                report.json, report.md and plots in DIR/report
    --break-lease                                          take over the lease of a run dead on another host

Config keys (every key, type, default and meaning: docs/SWEEPS.md):
    out, eps, norm, n_reevals, n_select, seed, batch_size, grad, device, dtype, backend, eot_chunk, large_eps,
    large_eps_n, ensemble, threads, save_adv, grid, quiet
    [data]      dataset (digits | cifar10 | cifar100 | imagenet), split, path, labels, label_type, class_map,
                subset, n, ids, ids_file, data_seed
    [model]     diffusion, diffusion_kind, diffusion_config (table), classifier, classifier_kind,
                classifier_config (table), normalize, aux, allow_downsample
    [[methods]] name, label, t_star, steps, scale, attacks
    [[attacks]] name, kind, loss, steps, eot, step_size, random_start, grad, variant, weight, kappa, states, cascade
    [default_ensemble] use, steps, eot, transfer_steps
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import ConfigError, SweepConfig, config_id
from .plan import load_config

__all__ = ["ConfigError", "SweepConfig", "load_config", "main", "run"]


def run(config, overrides=(), **kw) -> dict:
    """Python entry: run this process's share of the sweep in `config` (a TOML path or a SweepConfig)."""
    from .runner import run_sweep

    cfg = config if isinstance(config, SweepConfig) else load_config(config, overrides)
    return run_sweep(cfg, **kw)


def _parser_run(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="run a sweep (this process's share of it)")
    p.add_argument("config", help="the sweep's TOML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field (dotted keys: data.n=64, methods.0.t_star=50); repeatable")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--break-lease", action="store_true",
                   help="take over leases held on another host (you know that run is dead)")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd = argv[0]
    try:
        if cmd == "status":
            p = argparse.ArgumentParser(prog="fastpurify sweep status")
            p.add_argument("dir")
            from .merge import status

            print(status(p.parse_args(argv[1:]).dir))
            return 0
        if cmd == "report":
            return _report(argv[1:])
        if cmd == "check":
            return _check(argv[1:])
        a = _parser_run("fastpurify sweep").parse_args(argv[1:] if cmd == "run" else argv)
        cfg = load_config(a.config, a.overrides + (["quiet=true"] if a.quiet else []))
        run(cfg, break_lease=a.break_lease)
        return 0
    except ConfigError as e:
        for line in str(e).splitlines():
            print(f"fastpurify sweep: error: {line}", file=sys.stderr)
        return 2


def _check(argv) -> int:
    """Everything the run builds before its first batch (preflight); the resolved config on stdout, what was decided
    for the user on stderr."""
    from .preflight import preflight

    a = _parser_run("fastpurify sweep check").parse_args(argv)
    cfg = load_config(a.config, a.overrides)
    plan = preflight(cfg)
    print(json.dumps({"config_id": config_id(cfg), "config": cfg.as_dict()}, indent=2))
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"fastpurify sweep check: ok ({len(plan.ids)} images, {len(plan.defences)} methods)", file=sys.stderr)
    return 0


def _report(argv) -> int:
    from .report import IncompleteSweep, write_report

    p = argparse.ArgumentParser(prog="fastpurify sweep report")
    p.add_argument("dir")
    p.add_argument("--partial", action="store_true", help="write a report marked PARTIAL over incomplete data")
    p.add_argument("--out", default=None, help="where to write (default DIR/report)")
    a = p.parse_args(argv)
    try:
        rep = write_report(a.dir, partial=a.partial, dest=a.out)
    except IncompleteSweep as e:
        print(f"fastpurify sweep report: {e}", file=sys.stderr)
        return 1
    from pathlib import Path

    dest = Path(a.out) if a.out else Path(a.dir) / "report"
    print((dest / "report.md").read_text(), end="")
    print(f"wrote {dest / 'report.json'}, {dest / 'report.md'}"
          + "".join(f", {dest / f}" for f in rep["plots"].values()), file=sys.stderr)
    if rep["duplicates"]:
        print(f"fastpurify sweep report: {len(rep['duplicates'])} (method, image) pairs recorded more than once "
              "(two runs wrote into this directory); see DUPLICATES in report.md", file=sys.stderr)
        return 1
    return 0
