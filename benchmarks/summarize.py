"""Print a pytest-benchmark JSON of benchmarks/bench_ops.py as a table: median, GB/s and the ratios to the eager
torch baselines measured in the same run.

    python benchmarks/summarize.py benchmarks/results/cpu/bench_ops.json [--bandwidth GBPS]

--bandwidth: the device's copy bandwidth (gpu_check.py measures it) to add a "% of copy" column.
"""

from __future__ import annotations

import argparse
import json


def rows(path: str) -> list[dict]:
    with open(path) as f:
        data = json.load(f)
    out = []
    for b in data["benchmarks"]:
        e = b.get("extra_info", {})
        if "op" not in e:
            continue
        out.append(dict(op=e["op"], shape="x".join(map(str, e["shape"])), dtype=e["dtype"], provider=e["provider"],
                        median_ms=b["stats"]["median"] * 1e3, gb_per_s=e["gb_per_s"], vs_torch=e["ratio_vs_torch"],
                        vs_randn=e.get("ratio_vs_eager_randn")))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json")
    p.add_argument("--bandwidth", type=float, default=None, help="copy bandwidth of the device, GB/s")
    a = p.parse_args(argv)
    head = f"{'op':22s} {'shape':14s} {'dtype':8s} {'backend':8s} {'median ms':>10s} {'GB/s':>8s} " \
           f"{'x torch':>8s} {'x randn':>8s}" + (f" {'% copy':>7s}" if a.bandwidth else "")
    print(head)
    for r in sorted(rows(a.json), key=lambda r: (r["op"], r["shape"], r["dtype"], r["provider"])):
        line = (f"{r['op']:22s} {r['shape']:14s} {r['dtype']:8s} {r['provider']:8s} {r['median_ms']:10.3f} "
                f"{r['gb_per_s']:8.2f} {r['vs_torch']:8.2f} " + (f"{r['vs_randn']:8.2f}" if r["vs_randn"] else
                                                                   f"{'-':>8s}"))
        if a.bandwidth:
            line += f" {100 * r['gb_per_s'] / a.bandwidth:7.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
