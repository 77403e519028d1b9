"""Markdown tables of protocol results (`evaluate`'s dicts): one block per defence — clean, every attack, the
per-sample ensemble — with Wilson intervals, then the masking checks."""

from __future__ import annotations


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _ci(row: dict, key: str = "mean") -> str:
    ci = row.get(f"{key}_ci95")
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def result_rows(result: dict, per_attack: bool = True) -> list[str]:
    """Markdown rows (no header) of one defence."""
    name = result["defence"]["defence"]
    clean = result["clean"]
    ens = result["ensemble"]
    out = [f"| {name} | **ensemble** | {ens['n']} | {_pct(clean['mean'])} | **{_pct(ens['mean'])}**{_ci(ens)} | "
           f"{_pct(ens['worst'])}{_ci(ens, 'worst')} | {_pct(ens['majority'])} | {result['nfe_defense']} |"]
    if per_attack:
        for row in result["attacks"]:
            if "skipped" in row:
                out.append(f"| | {row['attack']} | 0 | | skipped: {row['skipped']} | | | |")
                continue
            spec = row["spec"]
            how = f"{spec['steps']}×{row['stats']['pgd']['eot']}" + ("" if spec["exact"] else ", transfer")
            if row.get("n_skipped"):  # a cascaded attack: the samples at the floor were left out, and why
                how += f", cascaded: {row['n_skipped']} skipped, already wrong on every draw"
            out.append(f"| | {row['attack']} ({how}) | {row['n']} | | {_pct(row['mean'])}{_ci(row)} | "
                       f"{_pct(row['worst'])} | {_pct(row['majority'])} | |")
    return out


HEADER = ["| defence | attack | n | clean % | robust mean % [95 % CI] | worst % | majority % | NFE |",
          "|---|---|---|---|---|---|---|---|"]


def markdown_table(results: list[dict], per_attack: bool = True) -> str:
    lines = list(HEADER)
    for r in results:
        lines += result_rows(r, per_attack)
    return "\n".join(lines)


def checks_lines(results: list[dict]) -> list[str]:
    """One line per masking check: name, ok / FAILED / not run, value vs threshold; a failed or not-run check
    also says why (its reason, or its detail)."""
    lines = []
    for r in results:
        for c in r["checks"]:
            status = "not run" if c["passed"] is None else ("ok" if c["passed"] else "FAILED")
            line = (f"{r['defence']['defence']:>14s}  {c['name']:40s} {status:7s} value {c['value']} "
                    f"(threshold {c['threshold']})")
            if c["passed"] is False:
                line += f" [{c.get('category', 'masking')}: {c.get('reason') or c['detail']}]"
            elif c["passed"] is None:
                line += f" [{c['detail']}]"
            lines.append(line)
    return lines


def failed_checks(results: list[dict]) -> list[str]:
    return [f"{r['defence']['defence']}: {c['name']}" for r in results for c in r["checks"] if c["passed"] is False]


def attack_coverage_lines(results: list[dict]) -> list[str]:
    """How many samples each attack ran on, and why (cascaded attacks skip samples already at the floor)."""
    lines = []
    for r in results:
        for row in r["attacks"]:
            lines.append(f"{r['defence']['defence']:>14s}  {row['attack']:24s} ran on {row['n_attacked']} of "
                         f"{r['n_examples']}: {row.get('why', 'every sample')}"
                         + (f" ({row['n_skipped']} skipped)" if row.get("n_skipped") else ""))
    return lines
