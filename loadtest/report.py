"""The load-test report: one table and PNG plots under artifacts/loadtest/, summarised in the terminal."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from llmrec.loadtest import modes
from llmrec.runs import table

COLUMNS = (
    "run",
    "model",
    "offered_rps",
    "achieved_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "errors",
    "mean_batch",
)


def rows(runs, models: list[str]) -> list[dict]:
    out = []
    for run in runs:
        for model in models:
            if model in run.locust:
                row = run.row(model)
                out.append({k: row[k] for k in COLUMNS})
    return out


def show(title: str, report_rows: list[dict]) -> str:
    text = f"\n{title}\n{table(report_rows, '.1f')}"
    print(text, flush=True)
    return text


def plot_ramp(runs, model: str, p99_bound_ms: float, path: Path) -> Path:
    """Latency percentiles vs offered load, with the bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted(((r.offered_rps, r.locust[model]) for r in runs if model in r.locust), key=lambda p: p[0])
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax.plot([p[0] for p in points], [p[1][key] for p in points], style, label=key)
    ax.axhline(p99_bound_ms, color="grey", linestyle="--", label=f"p99 bound {p99_bound_ms:.0f} ms")
    ax.set(xlabel="offered load (req/s)", ylabel="latency (ms)", title=f"{model}: latency vs offered load")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _latency_and_save(fig, latency, x: list[float], rows: list[dict], xlabel: str, path: Path) -> Path:
    """The lower panel of the spike and soak plots (admitted p50 and p99 on a log axis), then the file."""
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    latency.plot(x, [r["ok_p50_ms"] for r in rows], "b-", label="admitted p50")
    latency.plot(x, [r["ok_p99_ms"] for r in rows], "m-", label="admitted p99")
    latency.set(xlabel=xlabel, ylabel="ms", yscale="log")
    latency.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    latency.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))  # 20, not 2 x 10^1
    latency.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    latency.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# the admission proxy's modes that refuse early (llmrec.loadtest.modes), shaded in the spike and soak plots
MODE_COLOURS = {"overloaded": "#f8d4d4"}


def _shade_modes(axes: list, switches: list, end: float, scale: float = 1.0) -> None:
    """The spans the admission proxy held fewer calls (run.calls["switches"]), shaded behind each panel, x in
    seconds / `scale` from 0 to `end`; a legend entry per mode seen."""
    seen = set()
    for start, stop, mode in modes.spans(switches, 0.0, end):
        if mode in MODE_COLOURS and stop > start:
            for ax in axes:
                ax.axvspan(start / scale, stop / scale, color=MODE_COLOURS[mode], zorder=0, lw=0,
                           label=f"proxy {mode}" if ax is axes[0] and mode not in seen else None)  # fmt: skip
            seen.add(mode)


def plot_spike(run, path: Path) -> Path:
    """Per second: offered, answered and refused calls, and the answered calls' p50/p99."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.calls["per_second"]
    t = [r["t"] for r in rows]
    fig, (rates, latency) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    rates.plot(t, [r["offered_rps"] for r in rows], "k-", label="offered")
    rates.plot(t, [r["ok_rps"] for r in rows], "b-", label="answered")
    rates.plot(t, [r["refused"] for r in rows], "r-", label="refused (UNAVAILABLE)")
    rates.set(ylabel="calls / s", title=f"spike: {run.tasks}")
    _shade_modes([rates, latency], run.calls.get("switches", []), t[-1] + 1 if t else 0.0)
    rates.legend()
    return _latency_and_save(fig, latency, t, rows, "seconds", path)


def plot_soak(run, path: Path) -> Path:
    """Every 10 s of a soak: refused calls and the share of the server CPU stolen by the hypervisor; the
    server's CPU time per answered call and the machine's time for a fixed piece of work, each relative to its
    median over the soak; and the admitted calls' p50/p99: whether a p99 that moves, moves with the server's
    cost, and that cost with the machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = run.calls["series"]
    t = [r["from_s"] / 60 for r in rows]
    width = t[1] - t[0] if len(t) > 1 else 1 / 6
    mid = [x + width / 2 for x in t]  # the lines at the middle of their window, the bars across it
    fig, (load, cost, latency) = plt.subplots(3, 1, figsize=(7, 8), sharex=True)
    load.bar(t, [r["refused"] for r in rows], width=width, align="edge", color="r",
             label=f"refused calls per {width * 60:.0f} s")  # fmt: skip
    most = max([r["refused"] for r in rows], default=0)
    load.set(ylabel="refused calls", title=f"soak: {run.tasks} at {run.offered_rps:.0f} req/s",
             ylim=(0, max(most, 1) * 1.1))  # fmt: skip
    steal = load.twinx()
    steal.plot(mid, [r.get("steal_pct", math.nan) for r in rows], "k-", label="server CPU stolen (%)")
    if any("load_steal_pct" in r for r in rows):
        steal.plot(mid, [r.get("load_steal_pct", math.nan) for r in rows], "k:", label="load CPU stolen (%)")
    most_stolen = [r.get(k) or 0 for r in rows for k in ("steal_pct", "load_steal_pct")]
    steal.set(ylabel="stolen %", ylim=(0, max([10.0, *most_stolen]) * 1.1))
    warm_s = run.calls.get("warm_s", 0.0)  # the series starts after the warm-up, the switches with the run
    switches = [(s - warm_s, *rest) for s, *rest in run.calls.get("switches", [])]
    _shade_modes([load, cost, latency], switches, (t[-1] + width) * 60 if t else 0.0, scale=60)
    load.legend(loc="upper left")
    steal.legend(loc="upper right")
    for figure, style, label in (
        ("cpu_ms_per_call", "g-", "server CPU per answered call"),
        ("machine_ms", "k--", "machine: a fixed piece of work"),
    ):
        values = [r.get(figure, math.nan) for r in rows]
        typical = statistics.median([v for v in values if not math.isnan(v)] or [math.nan])
        cost.plot(mid, [v / typical for v in values], style, label=label)
    cost.axhline(1.0, color="0.6", lw=0.5)
    cost.set(ylabel="CPU time / its median")
    cost.legend(loc="upper left")
    return _latency_and_save(fig, latency, mid, rows, "minutes", path)


def plot_perf(results: dict[str, list[dict]], path: Path) -> Path:
    """perf_analyzer: throughput vs concurrency, and queue vs compute time, per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for model, levels in results.items():
        c = [r["concurrency"] for r in levels]
        left.plot(c, [r["throughput_rps"] for r in levels], "o-", label=model)
        color = left.get_lines()[-1].get_color()
        # Queue time is 0 without batching at concurrency 1: clipped to 0.01 ms to stay on the log axis.
        right.plot(c, [max(r["queue_ms"], 0.01) for r in levels], "o--", color=color, label=f"{model} queue")
        right.plot(c, [r["compute_ms"] for r in levels], "o-", color=color, label=f"{model} compute")
    # Log axes: rank (~1 req/s, ~1 s) and similar (~1000 req/s, ~ms) on one figure.
    left.set(
        xlabel="concurrency", ylabel="req/s", title="throughput vs concurrency", xscale="log", yscale="log"
    )
    right.set(
        xlabel="concurrency", ylabel="ms per request", title="server queue (dashed) vs compute", xscale="log",
        yscale="log",
    )  # fmt: skip
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
