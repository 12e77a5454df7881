"""Read the per-call log of an open-loop run (llmrec.loadtest.openloop: `t,name,status,ms`) into the figures an
overload or soak test is judged by: latency of the admitted (answered) calls apart from the refused ones.

    phases(log, {"base": (0, 20), "peak": (20, 50), "after": (50, 80)})   # per phase: calls, OK, refusals, p50/p99
    per_second(log)                                                         # the same, second by second
    recovery_s(log, peak_end=50, base_p99=...)                              # back to normal after the peak
    drift(log, windows=10)                                                  # p99 per window over a soak
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path

import numpy as np


def read(path: Path) -> list[tuple[float, str, str, float]]:
    """(t seconds, name, status, ms) per call, in time order."""
    with Path(path).open(newline="") as f:
        rows = [(float(t), name, status, float(ms)) for t, name, status, ms in csv.reader(f)]
    return sorted(rows)


def _stats(calls: list[tuple[float, str, str, float]], span_s: float) -> dict:
    ok = np.array([ms for _, _, status, ms in calls if status == "OK"])
    statuses = Counter(status for _, _, status, _ in calls if status != "OK")
    return {
        "calls": len(calls),
        "offered_rps": round(len(calls) / span_s, 1) if span_s > 0 else math.nan,
        "ok": int(ok.size),
        "ok_rps": round(ok.size / span_s, 1) if span_s > 0 else math.nan,
        "refused": statuses.get("UNAVAILABLE", 0),  # a full queue or its timeout: the overload policy
        "other_errors": sum(n for s, n in statuses.items() if s != "UNAVAILABLE"),
        "ok_p50_ms": round(float(np.percentile(ok, 50)), 2) if ok.size else math.nan,
        "ok_p99_ms": round(float(np.percentile(ok, 99)), 2) if ok.size else math.nan,
        "statuses": dict(statuses),
    }


def phases(calls, spans: dict[str, tuple[float, float]], name: str | None = None) -> dict[str, dict]:
    """Figures per named time span [start, end) of the run; `name` keeps one model's calls."""
    calls = [c for c in calls if name is None or c[1] == name]
    return {
        phase: _stats([c for c in calls if start <= c[0] < end], end - start)
        for phase, (start, end) in spans.items()
    }


def per_second(calls, name: str | None = None) -> list[dict]:
    """Offered and answered calls, refusals and the admitted p50/p99 for each whole second of the run."""
    calls = [c for c in calls if name is None or c[1] == name]
    if not calls:
        return []
    seconds = int(math.ceil(calls[-1][0])) or 1
    buckets: list[list] = [[] for _ in range(seconds)]
    for c in calls:
        buckets[min(int(c[0]), seconds - 1)].append(c)
    return [
        {"t": t, **{k: v for k, v in _stats(bucket, 1.0).items() if k != "statuses"}}
        for t, bucket in enumerate(buckets)
    ]


def summary(calls, duration_s: float) -> dict:
    """One run's totals in the shape of a locust entry (requests, failures, rps, p50/p95/p99 ms of all calls)."""
    ms = np.array([c[3] for c in calls]) if calls else np.array([math.nan])
    return {
        "requests": len(calls),
        "failures": sum(c[2] != "OK" for c in calls),
        "rps": len(calls) / duration_s if duration_s else 0.0,
        **{f"p{q}": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
    }


def recovery_s(
    calls, peak_end: float, base_p99: float, factor: float = 1.5, name: str | None = None
) -> float | None:
    """Seconds after the peak until a whole second has no refusal and an admitted p99 within `factor` x
    the base p99; None if that never happens before the log ends."""
    calls = [c for c in calls if c[0] >= peak_end and (name is None or c[1] == name)]
    if not calls:
        return None
    for second in range(int(math.ceil(calls[-1][0] - peak_end))):
        window = [c for c in calls if peak_end + second <= c[0] < peak_end + second + 1]
        ok = [ms for _, _, status, ms in window if status == "OK"]
        if window and len(ok) == len(window) and np.percentile(ok, 99) <= factor * base_p99:
            return float(second)
    return None


def drift(calls, windows: int = 10, name: str | None = None) -> dict:
    """Admitted p99 per equal time window of a steady run, and its drift: the p99 of the run's second
    half against the first half's (a slow leak or a growing queue shows as a rising p99)."""
    calls = [c for c in calls if name is None or c[1] == name]
    if not calls:
        return {"windows": [], "drift": math.nan}
    start, end = calls[0][0], calls[-1][0]
    width = (end - start) / windows
    rows = [
        {
            "from_s": round(start + i * width, 1),
            **_stats(
                [
                    c
                    for c in calls
                    if start + i * width <= c[0] < start + (i + 1) * width
                    or (i == windows - 1 and c[0] == end)
                ],
                width,
            ),
        }
        for i in range(windows)
    ]
    middle = start + (end - start) / 2
    halves = [
        _stats([c for c in calls if (c[0] < middle) == first], (end - start) / 2) for first in (True, False)
    ]
    first, last = halves[0]["ok_p99_ms"], halves[1]["ok_p99_ms"]
    return {
        "windows": rows,
        "first_half_p99_ms": first,
        "second_half_p99_ms": last,
        "drift": round(last / first - 1.0, 3) if first else math.nan,  # second half's p99 vs the first's
    }
