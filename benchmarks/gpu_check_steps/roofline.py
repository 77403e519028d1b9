"""The roofline step (`gpu_check.py --internal roofline`): copy bandwidth and matmul rates."""

from __future__ import annotations

import json
from pathlib import Path

import _meta  # benchmarks/ is on sys.path (gpu_check.py puts it there)


def internal_roofline(out_rows: Path, dry: bool) -> int:
    """Copy bandwidth and matmul rates, one JSON line each (`gpu_check.py --internal roofline`)."""
    import torch

    device = "cpu" if dry or not torch.cuda.is_available() else "cuda"
    n_copy, n_mm = ((1 << 30), 8192) if device == "cuda" else ((1 << 24), 256)

    def timed(fn, reps):
        for _ in range(2):
            fn()
        ts = []
        for _ in range(reps):
            ts.append(_meta.time_call(fn, device))
        return sorted(ts)[len(ts) // 2]

    def copy_rate() -> dict:
        src = torch.empty(n_copy // 4, dtype=torch.float32, device=device).uniform_()
        dst = torch.empty_like(src)
        s = timed(lambda: dst.copy_(src), 20)
        return dict(kind="roofline", what="copy", bytes=n_copy, gb_per_s=2 * n_copy / s / 1e9, median_s=s,
                    device=device)

    row = copy_rate()
    _meta.append_jsonl(out_rows, row)
    print(json.dumps(row), flush=True)
    if _meta.hang_after() is not None:
        _meta.hang("roofline", out_rows)
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        if device == "cpu" and name == "tf32":
            continue
        if device == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n_mm, n_mm, device=device, dtype=dtype)
        b = torch.randn(n_mm, n_mm, device=device, dtype=dtype)
        s = timed(lambda: a @ b, 10)
        row = dict(kind="roofline", what=f"matmul_{name}", n=n_mm, flop_per_s=2 * n_mm ** 3 / s, median_s=s,
                   device=device)
        _meta.append_jsonl(out_rows, row)
        print(json.dumps(row), flush=True)
    return 0
