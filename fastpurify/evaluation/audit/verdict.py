"""The verdict: "reliable …" only when every check that ran passed and the exact attacks converged, or when the
robust accuracy is already 0 % and only convergence failed (more steps can only lower a figure that cannot go
lower; a masking or noise failure still makes it "not reliable": a defect to report whatever the number);
otherwise "not reliable: <reasons>".  Never a robust accuracy without it."""

from __future__ import annotations

# Categories that make a figure unreliable when a check of theirs fails: the exact gradient is masked or wrong
# ('masking'), too noisy for the EOT budget ('noise'), or the attack had not converged ('convergence').
# 'coverage' and 'protocol' records are caveats, said in the verdict but not failing it.
FAILING = ("masking", "noise", "convergence")


def verdict(checks: list[dict], caveats: list[str], robust: dict) -> str:
    failed = [c for c in checks if c["passed"] is False and c["category"] in FAILING]
    fd = [c for c in checks if c["name"].startswith("gradient_matches_finite_differences")]
    if fd and all(c["passed"] is None for c in fd):  # no gradient was confirmed: nothing backs the exact attacks
        failed.append({"name": "gradient_correctness", "reason": "no finite-difference check could run ("
                       + "; ".join(c["detail"] for c in fd) + "): the exact gradient is unverified"})
    acc = (f"robust accuracy {100 * robust['mean']:.1f} % [{100 * robust['mean_ci95'][0]:.1f}, "
           f"{100 * robust['mean_ci95'][1]:.1f}] (mean over report draws, 95 % Wilson)")
    if robust["mean"] == 0.0 and all(c.get("category") == "convergence" for c in failed):
        # nothing left to lower: more steps cannot make the figure smaller than it is (masking still fails loudly)
        text = (f"reliable: the defence is broken — {acc}: every sample wrong on every report draw, which more "
                "steps cannot lower")
        notes = [f"not converged, for the record: {', '.join(c['name'] for c in failed)}"] if failed else []
    elif failed:
        reasons = "; ".join(f"{c['name']}: {c['reason']}" for c in failed)
        return f"not reliable: {reasons} — {acc} is only an upper bound of unknown slack"
    else:
        text = f"reliable: no sign of gradient masking, exact attacks converged — {acc} is an upper bound from them"
        notes = []
    # a convergence check answered by its escalated rerun is superseded, not missing
    not_run = [c["name"] for c in checks if c["passed"] is None and "(rerun as" not in c["detail"]]
    notes += list(caveats) + ([f"not run or superseded: {', '.join(not_run)}"] if not_run else [])
    return text + (f" (caveats: {'; '.join(notes)})" if notes else "")
