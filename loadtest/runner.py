"""Drive locust headless against a server and read both sides: locust's own statistics and Triton's
counters, scraped just before and just after each run so the server-side figures cover the same window.

Scenarios:
  steady  one rate for a duration.
  ramp    steady steps at rising rates until p99 passes the bound, errors appear or the server stops
          keeping up (achieved < 90% of offered); the last passing rate is the saturation point, then
          50% and 80% of it are measured.
  spike   a base rate, 3x the saturation rate for 30 s, then the base rate again, sent by the open-loop
          generator (llmrec.loadtest.openloop); the per-call log (llmrec.loadtest.calls) gives the
          admitted calls' latency and the refusals per phase and per second, and the recovery.
  soak    one rate (70% of saturation by default) for a long time (10 min, after a 5 s warm-up counted
          apart), from the open-loop generator (Poisson arrivals by default): errors, and the drift of the
          admitted calls' p99 from the first half of the run to the second.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmrec.loadtest import calls, machine, modes, speed
from llmrec.server import metrics
from llmrec.server.launcher import pinned_to

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


@dataclass
class Target:
    """Where the load goes: a gRPC address and the Triton metrics URL of the same server."""

    grpc_url: str
    metrics_url: str
    control_key: str | None = None  # for perf_analyzer, which reads the model config (a control call)
    load_cpus: set[int] | None = None  # pin the load generator to these CPUs (apart from the server's)
    # The server's CPUs on this machine (None: any): open-loop runs report how busy they were and how much time
    # the hypervisor stole, and the same for `load_cpus` when set (load_busy_pct, load_steal_pct: a generator
    # or proxy that falls behind also delays calls). Off for a server attached by URL (it may run elsewhere).
    server_cpus: set[int] | None = None
    watch_machine: bool = False
    # The admission proxy's log when the load goes through it: spike phases and soak windows then say how
    # often it left queueing and how long it held fewer calls (llmrec.loadtest.modes).
    admission_log: Path | None = None
    # The local server's process (tritonserver; its python stubs are its children): open-loop runs report the
    # resident memory of the whole tree (rss_mib), and the soak its growth.
    server_pid: int | None = None


@dataclass
class RunResult:
    label: str
    tasks: str
    offered_rps: float
    duration_s: float
    locust: dict[str, dict]  # name -> requests, failures, rps, p50/p95/p99 (ms); "Aggregated" too
    server: dict[str, dict]  # model -> Triton's split over the same window
    calls: dict = field(default_factory=dict)  # per-call figures (spike, soak: llmrec.loadtest.calls)

    def row(self, name: str) -> dict:
        loc, srv = self.locust.get(name, {}), self.server.get(name, {})
        return {
            "run": self.label,
            "model": name,
            "offered_rps": round(self.offered_rps, 2),
            "achieved_rps": round(loc.get("rps", 0.0), 2),
            "p50_ms": loc.get("p50", math.nan),
            "p95_ms": loc.get("p95", math.nan),
            "p99_ms": loc.get("p99", math.nan),
            "requests": loc.get("requests", 0),
            "errors": loc.get("failures", 0),
            "server_requests": int(srv.get("requests", 0)),
            "mean_batch": round(srv.get("mean_batch", 0.0), 2),
            "queue_ms": round(srv.get("queue_ms", 0.0), 2),
            "compute_ms": round(
                sum(srv.get(k, 0.0) for k in ("compute_input_ms", "compute_infer_ms", "compute_output_ms")), 2
            ),
        }


def users_for(rate: float) -> int:
    """Enough users that each one's share of the rate leaves room for slow answers."""
    return int(min(64, max(4, math.ceil(rate * 2))))


def _percentile(times: dict[int, int], total: int, q: float) -> float:
    """Locust's bucketed response times {ms: count} -> the q-th percentile (ms)."""
    if total == 0:
        return math.nan
    seen = 0
    for ms in sorted(times):
        seen += times[ms]
        if seen >= q / 100 * total:
            return float(ms)
    return float(max(times))


def _read_stats(prefix: Path, duration_s: float) -> dict[str, dict]:
    """Final statistics from locust's --json-file (written at exit, after in-flight calls end; the
    --csv stats file is a periodic snapshot that misses the last ones)."""
    entries = json.loads(Path(f"{prefix}.json").read_text())
    out: dict[str, dict] = {}
    merged: dict[int, int] = {}
    for e in entries:
        times = {int(k): v for k, v in e["response_times"].items()}
        for k, v in times.items():
            merged[k] = merged.get(k, 0) + v
        out[e["name"]] = _entry(e["num_requests"], e["num_failures"], times, duration_s)
    total = sum(e["num_requests"] for e in entries)
    out["Aggregated"] = _entry(total, sum(e["num_failures"] for e in entries), merged, duration_s)
    return out


def _entry(requests: int, failures: int, times: dict[int, int], duration_s: float) -> dict:
    # response_times counts successes and failures alike
    n = sum(times.values())
    return {
        "requests": requests,
        "failures": failures,
        "rps": requests / duration_s if duration_s else 0.0,
        **{f"p{q}": _percentile(times, n, q) for q in (50, 95, 99)},
    }


CALL_TIMEOUT_S = 30  # a call not answered by then counts as a failure (DEADLINE_EXCEEDED)
# At the end, calls in flight finish (or time out) and are counted, never killed.
STOP_TIMEOUT_S = CALL_TIMEOUT_S + 5


def locust_run(
    target: Target,
    workload: Path,
    out_dir: Path,
    label: str,
    tasks: str,
    rate: float,
    duration_s: float,
    extra_env: dict[str, str] | None = None,
) -> RunResult:
    """One headless locust process, bounded by `duration_s` (and a hard timeout), against 127.0.0.1 or `target`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / label
    users = users_for(rate)
    env = {
        **os.environ,
        "LLMREC_LOAD_WORKLOAD": str(workload),
        "LLMREC_LOAD_TASKS": tasks,
        "LLMREC_LOAD_RATE": str(rate),
        "LLMREC_LOAD_USERS": str(users),
        "LLMREC_LOAD_TIMEOUT": str(CALL_TIMEOUT_S),
        **(extra_env or {}),
    }
    log_path = out_dir / f"{label}.locust.log"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", target.grpc_url, "--csv", str(prefix), "--json-file", str(prefix), "--only-summary",
        "--stop-timeout", str(STOP_TIMEOUT_S), "--exit-code-on-error", "0",
        "--loglevel", "INFO", "--logfile", str(log_path),
        "-u", str(users), "-r", str(users), "--run-time", f"{int(math.ceil(duration_s))}s",
    ]  # fmt: skip
    before = metrics.scrape(target.metrics_url)
    started = time.time()
    _run_locust(
        command, env, Path(f"{prefix}.json"), log_path, label, duration_s + STOP_TIMEOUT_S + 60,
        cpus=target.load_cpus,
    )  # fmt: skip
    server = metrics.server_split(before, metrics.settled_scrape(target.metrics_url))
    return RunResult(
        label=label,
        tasks=tasks,
        offered_rps=rate,
        duration_s=time.time() - started,
        locust=_read_stats(prefix, duration_s),
        server=server,
    )


EXIT_GRACE_S = 15.0


def _run_locust(
    command: list[str], env: dict, results: Path, log_path: Path, label: str, limit_s: float,
    grace_s: float = EXIT_GRACE_S, cpus: set[int] | None = None,
):  # fmt: skip
    """Run locust until it exits, or until `limit_s`.

    Locust writes its results file only after every user has stopped and its statistics are final. A
    process that has written it but then stalls on the way out (grpc's teardown under gevent did so on
    rare runs) is stopped after `grace_s` and its results are used; one that never writes them fails
    with its log."""
    results.unlink(missing_ok=True)
    with open(log_path.with_suffix(".out"), "w") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=pinned_to(cpus),
        )  # fmt: skip
        deadline, written_at = time.monotonic() + limit_s, None
        while process.poll() is None:
            now = time.monotonic()
            if written_at is None and _complete_json(results):
                written_at = now
            if now > deadline or (written_at is not None and now - written_at > grace_s):
                process.kill()
                process.wait()
                if written_at is None:
                    raise RuntimeError(
                        f"locust ({label}) did not finish within {limit_s:.0f} s; its log ends:\n"
                        + _tail(log_path)
                    )
                print(f"  locust ({label}) wrote its results but did not exit; stopped it", flush=True)
                return
            time.sleep(0.2)
    if process.returncode != 0 or not _complete_json(results):
        raise RuntimeError(
            f"locust ({label}) failed (exit {process.returncode}); its log ends:\n"
            + _tail(log_path.with_suffix(".out"))
            + _tail(log_path)
        )


def _complete_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def passes(run: RunResult, name: str, p99_bound_ms: float) -> bool:
    loc = run.locust.get(name, {})
    return (
        loc.get("failures", 1) == 0
        and loc.get("p99", math.inf) <= p99_bound_ms
        and loc.get("rps", 0.0) >= 0.9 * run.offered_rps
    )


MIN_REQUESTS = 30  # a p99 from fewer calls than this says little


def _step_s(rate: float, step_s: float) -> float:
    """A step lasts `step_s`, or longer where that would send fewer than MIN_REQUESTS calls (max 120 s)."""
    return max(step_s, min(120.0, MIN_REQUESTS / rate))


def ramp(
    target: Target,
    workload: Path,
    out_dir: Path,
    model: str,
    start_rps: float,
    p99_bound_ms: float,
    step_s: float,
    factor: float = 1.5,
    max_steps: int = 12,
    refine: int = 2,
    progress=print,
) -> tuple[float | None, bool, list[RunResult]]:
    """Saturation point of one model (and whether a step failed: if none did within `max_steps`, the last
    rate is only a lower bound), then measurements at 50% and 80% of it.

    Steps rise by `factor` until one fails; `refine` more steps then bisect (geometrically) between the
    last passing and the failing rate, so the saturation is known to within factor ** (1 / 2**refine)
    (1.5 and 2 steps: 11%). Offered rates are exact (users send on a fixed schedule), so `achieved < 90%
    of offered` means the server did not keep up within the step."""
    runs, rate, saturation, reached = [], start_rps, None, False

    def step(name: str, rate: float, note: str = "") -> bool:
        run = locust_run(target, workload, out_dir, name, model, rate, _step_s(rate, step_s))
        runs.append(run)
        ok = passes(run, model, p99_bound_ms)
        progress(
            f"  {model} @ {rate:.2f} req/s{note}: "
            + _summary(run, model)
            + ("" if ok else "  <- over the bound")
        )
        return ok

    for n in range(max_steps):
        if not step(f"{model}-ramp{n}", rate):
            reached = True
            break
        saturation, rate = rate, rate * factor
    if not reached:
        progress(f"  {model}: no step failed in {max_steps}; {saturation:.2f} req/s is a lower bound")
    elif saturation is not None:
        failed = rate
        for n in range(refine):
            middle = math.sqrt(saturation * failed)
            if step(f"{model}-refine{n}", middle, " (refining)"):
                saturation = middle
            else:
                failed = middle
    if saturation is not None:
        for share in (0.5, 0.8):
            run = locust_run(
                target,
                workload,
                out_dir,
                f"{model}-at{int(share * 100)}pct",
                model,
                saturation * share,
                _step_s(saturation * share, step_s),
            )
            run.label = f"{model} @ {int(share * 100)}% of saturation"
            runs.append(run)
            progress(f"  {model} @ {share:.0%} of saturation: " + _summary(run, model))
    return saturation, reached, runs


def open_loop(
    target: Target, workload: Path, out_dir: Path, label: str, model: str, phases: list[tuple[float, float]],
    arrivals: str = "even",
) -> tuple[RunResult, list, Callable[[float, float], dict]]:  # fmt: skip
    """One run of the open-loop generator (llmrec.loadtest.openloop) through `phases` of (seconds, req/s):
    the run's totals and Triton's split over the same window, the per-call log, and `around(t0, t1)`: how
    busy the server's CPUs were, how much of their time was stolen, the server's own CPU time and its resident
    memory (llmrec.loadtest.machine), the CPU time of a fixed piece of work on the server's CPUs (the machine's
    speed, llmrec.loadtest.speed; neither for a server attached by URL), and the admission proxy's modes
    (llmrec.loadtest.modes), between two times of the log."""
    log = out_dir / f"{label}.calls.csv"
    seconds = sum(s for s, _ in phases)
    before = metrics.scrape(target.metrics_url)
    started = time.time()
    command = [
        sys.executable, "-m", "llmrec.loadtest.openloop", "--url", target.grpc_url, "--workload", str(workload),
        "--model", model, "--phases", ",".join(f"{s}:{r}" for s, r in phases), "--log", str(log),
        "--timeout", str(CALL_TIMEOUT_S), "--arrivals", arrivals,
    ]  # fmt: skip
    sampler = machine.Sampler(target.server_cpus, pid=target.server_pid) if target.watch_machine else None
    load_sampler = machine.Sampler(target.load_cpus) if sampler and target.load_cpus else None
    probe = speed.Probe(target.server_cpus) if sampler else None
    with (
        sampler or contextlib.nullcontext(),
        load_sampler or contextlib.nullcontext(),
        probe or contextlib.nullcontext(),
    ):
        result = subprocess.run(
            command, capture_output=True, text=True, preexec_fn=pinned_to(target.load_cpus),
            timeout=seconds + STOP_TIMEOUT_S + 60,
        )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(
            f"the open-loop generator ({label}) failed:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"
        )
    server = metrics.server_split(before, metrics.settled_scrape(target.metrics_url))
    log_calls = calls.read(log)
    run = RunResult(
        label=label,
        tasks=model,
        offered_rps=phases[0][1],
        duration_s=time.time() - started,
        locust={model: calls.summary(log_calls, seconds)},
        server=server,
    )
    generator = json.loads(result.stdout.strip().splitlines()[-1])
    run.calls = {
        "generator": {"open-loop": generator, "arrivals": arrivals},
        "total": calls.phases(log_calls, {"all": (0.0, seconds)})["all"],
    }

    switches = (
        modes.read(target.admission_log, since=generator["started_at"]) if target.admission_log else None
    )
    if switches is not None:
        run.calls["switches"] = [s for s in switches if 0 <= s[0] <= seconds]

    def around(t0: float, t1: float) -> dict:
        figures = modes.between(switches, t0, t1) if switches is not None else {}
        if sampler is None:
            return figures
        at0, at1 = generator["started_at"] + t0, generator["started_at"] + t1
        load = load_sampler.between(at0, at1) if load_sampler else {}
        return (
            figures
            | sampler.between(at0, at1)
            | probe.between(at0, at1)
            | {f"load_{name}": value for name, value in load.items()}
        )

    return run, log_calls, around


def spike(
    target: Target, workload: Path, out_dir: Path, model: str, saturation: float, base_share: float = 0.5,
    warm_s: float = 35, peak_s: float = 30, tail_s: float = 30, arrivals: str = "even",
) -> RunResult:  # fmt: skip
    """The base rate, 3x the saturation rate for `peak_s`, the base rate again, from the open-loop generator
    (at 3x a one-core locust saturates and times its own wait, not the server's). The base phase's first 5 s
    are not counted (a cold start); its p99 is the reference for the peak's."""
    base, peak = saturation * base_share, saturation * 3
    phases = [(warm_s, base), (peak_s, peak), (tail_s, base)]
    run, log_calls, around = open_loop(target, workload, out_dir, f"{model}-spike", model, phases, arrivals)
    spans = {
        "base": (5.0, warm_s),
        "peak": (warm_s, warm_s + peak_s),
        "after": (warm_s + peak_s, warm_s + peak_s + tail_s),
    }
    run.calls |= {
        "phases": _with_context(calls.phases(log_calls, spans), spans, around),
        "offered_rps": {"base": base, "peak": peak},
        "per_second": calls.per_second(log_calls),
    }
    base_p99 = run.calls["phases"]["base"]["ok_p99_ms"]
    run.calls["recovery_s"] = calls.recovery_s(log_calls, warm_s + peak_s, base_p99)
    return run


def soak(
    target: Target, workload: Path, out_dir: Path, model: str, rate: float, duration_s: float = 600.0,
    arrivals: str = "poisson", warm_s: float = 5.0,
) -> RunResult:  # fmt: skip
    """`rate` req/s for `warm_s` + `duration_s` from the open-loop generator, as a Poisson stream by default
    (many independent callers): errors, and the drift of the admitted calls' p99 over the `duration_s` after
    the warm-up, beside the drift of the server's own CPU time per answered call (cost_drift), of the machine's
    speed (machine_drift: the CPU time of a fixed piece of work, llmrec.loadtest.speed) and the server's
    resident memory at the start, end and peak of that run (`memory`). The warm-up's figures are kept apart, as
    the spike's first 5 s are: a server, proxy and generator just started can stall for tens of ms
    (2026-12-03: 24 refusals in the first 0.2 s of a soak whose next 600 s refused none)."""
    run, log_calls, around = open_loop(
        target, workload, out_dir, f"{model}-soak", model, [(warm_s + duration_s, rate)], arrivals
    )
    spans = {"warm-up": (0.0, warm_s), "soak": (warm_s, warm_s + duration_s)}
    steady = [(t - warm_s, *rest) for t, *rest in log_calls if t >= warm_s]

    def in_context(row: dict, t0: float, t1: float) -> dict:  # times after the warm-up
        return _in_context(row, warm_s + t0, warm_s + t1, around)

    drift = calls.drift(steady)  # 10 windows
    series = calls.drift(steady, windows=max(int(duration_s // 10), 1))["windows"]  # every 10 s, for the plot
    for rows in (drift["windows"], series):
        width = duration_s / max(len(rows), 1)
        for row in rows:
            in_context(row, row["from_s"], row["from_s"] + width)
    half_spans = {"first": (0.0, duration_s / 2), "second": (duration_s / 2, duration_s)}
    halves = {h: in_context(row, *half_spans[h]) for h, row in calls.phases(steady, half_spans).items()}
    for figure, name in (("cpu_ms_per_call", "cost_drift"), ("machine_ms", "machine_drift")):
        first, second = (halves[h].get(figure, math.nan) for h in half_spans)
        if first > 0 and second > 0:  # False for NaN
            drift[figure] = {"first_half": first, "second_half": second}
            drift[name] = round(second / first - 1.0, 3)
    run.calls |= {
        "phases": _with_context(calls.phases(log_calls, spans), spans, around),
        "drift": drift,
        "series": series,
        "warm_s": warm_s,
    }
    start, end = (around(warm_s + t, warm_s + t).get("rss_mib", math.nan) for t in (0.0, duration_s))
    if not math.isnan(start) and not math.isnan(end):  # the server's memory over the counted run
        run.calls["memory"] = {
            "start_mib": start,
            "end_mib": end,
            # start and end are the samples nearest the run's edges, which may fall just before it
            "peak_mib": max(start, end, around(warm_s, warm_s + duration_s)["rss_mib"]),
            "growth": round(end / start - 1.0, 3),
        }
    return run


def _with_context(figures: dict[str, dict], spans: dict, around: Callable) -> dict[str, dict]:
    """Each span's figures in context (`_in_context`)."""
    return {name: _in_context(row, *spans[name], around) for name, row in figures.items()}


def _in_context(row: dict, t0: float, t1: float, around: Callable) -> dict:
    """A span's figures with the proxy's modes and the machine's over the same span, and the server's own CPU
    time per answered call (cpu_ms_per_call, when the server is local): a p99 that moved with the steal, the
    modes or the server's cost per call moved with them, not with a queue."""
    row |= around(t0, t1)
    if row.get("ok") and not math.isnan(row.get("server_cpu_pct", math.nan)):
        row["cpu_ms_per_call"] = round(row["server_cpu_pct"] / 100 * (t1 - t0) * 1e3 / row["ok"], 3)
    return row


def _summary(run: RunResult, name: str) -> str:
    loc = run.locust.get(name, {})
    return (
        f"achieved {loc.get('rps', 0):.2f} req/s, p50 {loc.get('p50', math.nan):.0f} ms, "
        f"p99 {loc.get('p99', math.nan):.0f} ms, errors {loc.get('failures', 0)}"
    )


def save(runs: list[RunResult], path: Path, extra: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**(extra or {}), "runs": [r.__dict__ for r in runs]}
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path
