"""`llmrec loadtest`: start (or attach to) a server, run a scenario, print and save the report.

Scenarios: smoke (seconds, every model; fails on any error or if locust and Triton disagree on the
request count), steady, ramp (saturation point and the p99 at 50% / 80% of it per model), spike (3x the
saturation rate for 30 s: refusals and the admitted calls' latency per phase, recovery), soak (70% of the
saturation rate for 10 minutes: errors and p99 drift; both from the open-loop generator, `arrivals` even or
poisson, by default even for the spike and poisson for the soak), perf (perf_analyzer at concurrency 1..32), full
(ramp + spike + perf).
Everything lands in artifacts/loadtest/<scenario>/: the JSON of every run, the table, PNG plots.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from llmrec.loadtest import perf_analyzer, report, runner
from llmrec.loadtest.workload import Workload
from llmrec.server.admission import Limits
from llmrec.server.client import CONTROL_KEY_ENV

DEFAULT_START_RPS = {"rank": 5.0, "similar": 50.0, "embed": 5.0}
# The ramp's p99 bound per model: about 3x its unloaded p99 on the 2-core machine (rank ~700 ms, similar ~7 ms,
# embed ~20 ms), so the saturation point marks where queueing, not the work, sets the latency.
DEFAULT_P99_BOUND_MS = {"rank": 100.0, "similar": 100.0, "embed": 200.0}
SOAK_SHARE, SOAK_S = 0.7, 600.0  # the soak: 70% of the saturation rate for 10 minutes (--duration overrides)


class LoadTestFailed(RuntimeError):
    """The smoke test saw errors or a count mismatch."""


@contextlib.contextmanager
def target(
    repo: Path | None, url: str | None, metrics_url: str | None, batching: bool, out_dir: Path,
    cpus: tuple[set[int], set[int]] | None = None,
    admission: Limits | None = None,
    admission_cpus: set[int] | None = None,
):  # fmt: skip
    """Attach to `url` (with its `metrics_url`), or start the embedded server on `repo` on 127.0.0.1;
    `cpus` = (the server's, the load generator's) pins each to its own CPUs. With `admission`, the load goes
    through the admission proxy (llmrec.server.admission, on `admission_cpus`) in front of the server."""
    server_cpus, load_cpus = cpus or (None, None)
    if url:
        if not metrics_url:
            raise ValueError("attaching to a server needs its metrics URL too (--metrics-url)")
        yield runner.Target(url, metrics_url, os.environ.get(CONTROL_KEY_ENV), load_cpus)
        return
    from llmrec.export.repository import without_batching
    from llmrec.server.admission import AdmissionProxy
    from llmrec.server.launcher import TritonServer

    served = repo if batching else without_batching(repo, out_dir / "repo-no-batching")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(
            TritonServer(served, log_path=out_dir / "tritonserver.log", cpus=server_cpus)
        )
        grpc_url = server.grpc_url
        if admission:
            proxy = AdmissionProxy(
                server.grpc_url, admission, cpus=admission_cpus, log_path=out_dir / "admission.log"
            )
            grpc_url = stack.enter_context(proxy).grpc_url
        yield runner.Target(
            grpc_url,
            server.metrics_url,
            server.control_key,
            load_cpus,
            server_cpus,
            watch_machine=True,
            admission_log=out_dir / "admission.log" if admission else None,
            server_pid=server.process.pid,
        )


def soak_summary(figures: dict) -> str:
    """The soak's drifts in one line: the admitted p99's, the server's CPU time per answered call (its cost:
    a p99 that drifts with it followed the machine or the work, not a queue), the machine's CPU time for a fixed
    piece of work (its speed: a cost that drifts with it followed the machine) and the server's resident memory."""
    drift = figures["drift"]
    parts = [f"drift of the admitted p99 {drift['drift']:+.1%}"]
    if "cost_drift" in drift:
        cost = drift["cpu_ms_per_call"]
        parts.append(
            f"of the server's CPU per answered call {drift['cost_drift']:+.1%} "
            f"({cost['first_half']:.2f} -> {cost['second_half']:.2f} ms)"
        )
    if "machine_drift" in drift:
        work = drift["machine_ms"]
        parts.append(
            f"of the machine's fixed work {drift['machine_drift']:+.1%} "
            f"({work['first_half']:.2f} -> {work['second_half']:.2f} ms)"
        )
    if "memory" in figures:
        memory = figures["memory"]
        parts.append(
            f"server memory {memory['start_mib']:.0f} -> {memory['end_mib']:.0f} MiB ({memory['growth']:+.1%}, "
            f"peak {memory['peak_mib']:.0f})"
        )
    return "; ".join(parts)


def counts_agree(run: runner.RunResult) -> list[str]:
    """Per model: locust's request count (failures included) must equal Triton's over the same window."""
    problems = []
    for name, loc in run.locust.items():
        if name == "Aggregated":
            continue
        server = int(run.server.get(name, {}).get("requests", 0))
        if server != loc["requests"]:
            problems.append(f"{name}: locust sent {loc['requests']} requests, Triton counted {server}")
    return problems


def _show_failures(run: runner.RunResult) -> None:
    """The open-loop run's failed calls per message: the proxy's refusals say which limit refused them (queue
    full, waited too long, overloaded)."""
    messages = run.calls["generator"]["open-loop"].get("messages") or {}
    if messages:
        report.show(
            f"{run.label}: failed calls by message", [{"calls": n, "message": m} for m, n in messages.items()]
        )


def run_suite(
    scenario: str,
    repo: Path | None,
    out_dir: Path,
    models: list[str],
    duration_s: float,
    rate: float | None,
    p99_bound_ms: float | None = None,
    batching: bool = True,
    url: str | None = None,
    metrics_url: str | None = None,
    workload: Workload | None = None,
    concurrency: list[int] | None = None,
    cpus: tuple[set[int], set[int]] | None = None,
    admission: Limits | None = None,
    admission_cpus: set[int] | None = None,
    arrivals: str | None = None,
) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    workload = workload or Workload.of_pipeline()
    workload_path = workload.save(out_dir / "workload.json")
    started = time.time()
    result: dict = {
        "scenario": scenario,
        "batching": batching,
        "models": models,
        "p99_bound_ms": {m: p99_bound_ms or DEFAULT_P99_BOUND_MS[m] for m in models},
        "cpus": {"server": sorted(cpus[0]), "load": sorted(cpus[1])} if cpus else "shared",
        "admission": {**vars(admission), "cpus": sorted(admission_cpus or ())} if admission else None,
        "arrivals": arrivals,
    }
    runs: list[runner.RunResult] = []
    with target(repo, url, metrics_url, batching, out_dir, cpus, admission, admission_cpus) as where:
        if scenario in ("smoke", "steady"):
            tasks = ",".join(models)
            run = runner.locust_run(where, workload_path, out_dir, scenario, tasks, rate or 4.0, duration_s)
            runs.append(run)
            result["count_problems"] = counts_agree(run)
        if scenario in ("ramp", "full"):
            result["saturation_rps"], result["saturation_reached"] = {}, {}
            for model in models:
                bound = result["p99_bound_ms"][model]
                print(f"ramp: {model} (p99 bound {bound:.0f} ms, {duration_s:.0f} s per step)", flush=True)
                saturation, reached, model_runs = runner.ramp(
                    where,
                    workload_path,
                    out_dir,
                    model,
                    rate or DEFAULT_START_RPS[model],
                    bound,
                    duration_s,
                )
                result["saturation_rps"][model] = saturation
                result["saturation_reached"][model] = reached
                runs += model_runs
                if saturation:
                    report.plot_ramp(model_runs, model, bound, out_dir / f"{model}-latency-vs-load.png")
        if scenario in ("spike", "full"):
            for model in models:
                saturation = (result.get("saturation_rps") or {}).get(model) or rate
                if not saturation:
                    if scenario == "spike":
                        raise ValueError("spike needs the saturation rate: give --rate or run the ramp first")
                    print(f"spike: {model} skipped, its ramp found no passing rate", flush=True)
                    continue
                print(
                    f"spike: {model}, base {saturation * 0.5:.2f} req/s, peak {saturation * 3:.2f} req/s for 30 s",
                    flush=True,
                )
                run = runner.spike(
                    where, workload_path, out_dir, model, saturation, arrivals=arrivals or "even"
                )
                runs.append(run)
                report.plot_spike(run, out_dir / f"{model}-spike.png")
                result.setdefault("recovery_s", {})[model] = run.calls["recovery_s"]
                result.setdefault("overload", {})[model] = run.calls
                phases = [
                    {"phase": k, **{f: v for f, v in row.items() if f != "statuses"}}
                    for k, row in run.calls["phases"].items()
                ]
                report.show(
                    f"spike: {model}, admitted calls per phase (recovery {run.calls['recovery_s']} s)", phases
                )
                _show_failures(run)
        if scenario == "soak":
            for model in models:
                saturation = rate or (result.get("saturation_rps") or {}).get(model)
                if not saturation:
                    raise ValueError("soak needs the saturation rate: give --rate")
                soak_rate, soak_s = saturation * SOAK_SHARE, duration_s if duration_s >= 60 else SOAK_S
                print(
                    f"soak: {model} at {soak_rate:.1f} req/s ({SOAK_SHARE:.0%} of {saturation}) for {soak_s:.0f} s",
                    flush=True,
                )
                run = runner.soak(
                    where, workload_path, out_dir, model, soak_rate, soak_s, arrivals=arrivals or "poisson"
                )
                runs.append(run)
                report.plot_soak(run, out_dir / f"{model}-soak.png")
                result.setdefault("soak", {})[model] = run.calls
                report.show(
                    f"soak: {model}, the warm-up and the soak",
                    [
                        {"phase": k, **{f: v for f, v in row.items() if f != "statuses"}}
                        for k, row in run.calls["phases"].items()
                    ],
                )
                report.show(
                    f"soak: {model}, {soak_summary(run.calls)}",
                    [{k: v for k, v in w.items() if k != "statuses"} for w in run.calls["drift"]["windows"]],
                )
                _show_failures(run)
        if scenario in ("perf", "full"):
            result["perf_analyzer"] = {}
            for model in models:
                levels = concurrency or ([1, 2, 4, 8] if model == "rank" else [1, 2, 4, 8, 16, 32])
                print(f"perf_analyzer: {model} at concurrency {levels}", flush=True)
                result["perf_analyzer"][model] = perf_analyzer.run(
                    model, where.grpc_url, workload, out_dir / "perf", levels, control_key=where.control_key,
                    cpus=where.load_cpus,
                )  # fmt: skip
            report.plot_perf(result["perf_analyzer"], out_dir / "perf-throughput-and-split.png")
    result["wall_s"] = round(time.time() - started, 1)
    result["rows"] = report.rows(runs, models)
    if result["rows"]:
        report.show(f"Load test: {scenario} (batching {'on' if batching else 'off'})", result["rows"])
    if result.get("perf_analyzer"):
        for model, levels in result["perf_analyzer"].items():
            report.show(f"perf_analyzer: {model}", levels)
    runner.save(runs, out_dir / "runs.json", {k: v for k, v in result.items() if k != "rows"})
    (out_dir / "report.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    if scenario == "smoke":
        errors = sum(r["errors"] for r in result["rows"])
        if errors or result["count_problems"]:
            raise LoadTestFailed(
                f"smoke load test: {errors} errors; {'; '.join(result['count_problems']) or 'counts agree'}"
            )
    return result
