"""A short real load test in `make test`: locust gRPC users against the real tritonserver (tiny models).

Fails if any request errors or if locust and the server's own counters disagree on the request count."""

import json
import math
import os
import sys
import time

import numpy as np
import pandas as pd
import pytest

from llmrec.loadtest import modes, openloop, perf_analyzer, report, runner
from llmrec.loadtest.suite import counts_agree, run_suite, soak_summary, target
from llmrec.loadtest.workload import Workload
from llmrec.server import contract
from llmrec.server.admission import REFUSAL_PREFIX, Limits
from tests.conftest import make_items


def tiny_workload(items: pd.DataFrame) -> Workload:
    rng = np.random.default_rng(0)
    ids = items["item_id"].tolist()
    train = pd.DataFrame(
        [
            {"user_id": f"u{u}", "item_id": i, "timestamp": t}
            for u in range(6)
            for t, i in enumerate(rng.choice(ids, 12, replace=False))
        ]
    )
    test = pd.DataFrame([{"user_id": f"u{u}", "item_id": ids[u], "timestamp": 100} for u in range(6)])
    return Workload.from_data(items, train, test, history=5, candidates=10, ks=(3, 5))


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_load_has_no_errors_and_counts_agree(tiny_repo, tmp_path):
    result = run_suite(
        "smoke",
        tiny_repo["repo"],
        tmp_path,
        ["rank", "similar", "embed"],
        duration_s=6,
        rate=8.0,
        p99_bound_ms=5000,
        workload=tiny_workload(tiny_repo["items"]),
    )
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"rank", "similar", "embed"}
    assert sum(r["requests"] for r in runner_rows(tmp_path)) >= 20, "a few dozen requests at least"
    assert all(r["errors"] == 0 for r in rows.values()) and result["count_problems"] == []
    assert all(not math.isnan(r["p99_ms"]) for r in rows.values())
    assert (tmp_path / "report.json").is_file() and (tmp_path / "smoke.json").is_file()


@pytest.mark.integration
@pytest.mark.slow
def test_smoke_load_of_rank_by_item_ids(tiny_repo, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_LOAD_RANK_BY", "ids")  # what `llmrec loadtest --rank-by ids` sets
    result = run_suite(
        "smoke", tiny_repo["repo"], tmp_path, ["rank"], duration_s=4, rate=8.0, p99_bound_ms=5000,
        workload=tiny_workload(tiny_repo["items"]),
    )  # fmt: skip
    (row,) = result["rows"]
    assert row["model"] == "rank" and row["errors"] == 0 and result["count_problems"] == []
    assert sum(r["requests"] for r in runner_rows(tmp_path)) >= 10


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_spike_from_the_open_loop_generator_through_the_admission_proxy(tiny_repo, tmp_path):
    """`llmrec loadtest --scenario spike --max-in-flight 2`, shortened: every scheduled call is sent and
    accounted for, only refusals (UNAVAILABLE) may fail, the per-second figures and plot come out, and each
    phase carries the proxy's modes read from its log (whether this tiny load overloads the tiny server
    depends on the machine; test_admission drives the mode itself and test_modes reads a log)."""
    workload = tiny_workload(tiny_repo["items"]).save(tmp_path / "workload.json")
    limits = Limits(max_in_flight=2, max_queue=2, queue_timeout_ms=5)
    with target(tiny_repo["repo"], None, None, True, tmp_path, admission=limits) as where:
        run = runner.spike(where, workload, tmp_path, "similar", 20.0, warm_s=6, peak_s=4, tail_s=4)
    total = run.calls["total"]
    assert total["calls"] == 6 * 10 + 4 * 60 + 4 * 10, "open loop: every scheduled call leaves"
    assert total["other_errors"] == 0 and total["ok"] + total["refused"] == total["calls"]
    messages = run.calls["generator"]["open-loop"]["messages"]  # the refusals, by the proxy's message
    assert sum(messages.values()) == total["refused"]
    assert all(m.startswith(f"UNAVAILABLE: {REFUSAL_PREFIX}") for m in messages)
    assert run.calls["phases"]["base"]["ok"] > 0 and run.calls["phases"]["after"]["ok"] > 0
    assert len(run.calls["per_second"]) == 14
    assert run.locust["similar"]["requests"] == total["calls"]
    switches = run.calls["switches"]  # the switches within the run, from the proxy's log
    for name, (t0, t1) in {"base": (5, 6), "peak": (6, 10), "after": (10, 14)}.items():
        assert run.calls["phases"][name].items() >= modes.between(switches, t0, t1).items(), name
    assert report.plot_spike(run, tmp_path / "spike.png").stat().st_size > 0


@pytest.mark.integration
@pytest.mark.slow
def test_a_short_soak_from_the_open_loop_generator(tiny_repo, tmp_path):
    """`llmrec loadtest --scenario soak`, shortened: a Poisson stream for 2 s of warm-up and 6 s counted, every
    call answered, the drift of the admitted p99 over the counted run's windows."""
    workload = tiny_workload(tiny_repo["items"]).save(tmp_path / "workload.json")
    load_cpu = min(os.sched_getaffinity(0))  # the generator pinned: its CPU's figures are reported too
    with target(tiny_repo["repo"], None, None, True, tmp_path, cpus=(None, {load_cpu})) as where:
        run = runner.soak(where, workload, tmp_path, "similar", 15.0, duration_s=6.0, warm_s=2.0)
    assert run.calls["generator"]["arrivals"] == "poisson"
    total, phases = run.calls["total"], run.calls["phases"]
    assert 70 < total["calls"] < 180 and total["ok"] == total["calls"]
    assert phases["warm-up"]["calls"] + phases["soak"]["calls"] == total["calls"]
    assert 50 < phases["soak"]["calls"] < 140 and run.calls["generator"]["open-loop"]["messages"] == {}
    windows = run.calls["drift"]["windows"]
    assert len(windows) == 10 and sum(w["calls"] for w in windows) == phases["soak"]["calls"]
    assert windows[0]["from_s"] < 1.0 and run.calls["drift"]["first_half_p99_ms"] > 0
    assert (
        0 <= windows[0]["steal_pct"] <= 100 and 0 < phases["soak"]["busy_pct"] <= 100
    )  # the machine's figures
    assert 0 < phases["soak"]["load_busy_pct"] <= 100 and 0 <= windows[0]["load_steal_pct"] <= 100
    assert len(run.calls["series"]) == 1 and report.plot_soak(run, tmp_path / "soak.png").stat().st_size > 0
    memory = run.calls["memory"]  # tritonserver and its python stubs
    assert 100 < memory["start_mib"] <= memory["peak_mib"] and memory["end_mib"] <= memory["peak_mib"]
    assert windows[-1]["rss_mib"] > 100 and "server memory" in soak_summary(run.calls)
    cost = run.calls["drift"]["cpu_ms_per_call"]  # the server's own CPU time per answered call
    assert 0 < cost["first_half"] < 200 and 0 < cost["second_half"] < 200
    assert "CPU per answered call" in soak_summary(run.calls)
    work = run.calls["drift"]["machine_ms"]  # the machine's CPU time for a fixed piece of work
    assert 0 < work["first_half"] < 100 and 0 < work["second_half"] < 100
    assert "machine's fixed work" in soak_summary(run.calls) and windows[0]["machine_ms"] > 0


def test_open_loop_requests_for_every_model():
    workload = tiny_workload(make_items(24))
    for model in openloop.MODELS:
        built = openloop.requests(workload, model, count=3)
        assert len(built) == 3 and built[0].model_name == model and built[0].raw_input_contents
    by_ids = openloop.requests(workload, "rank", count=1, rank_by="ids")[0]
    assert {i.name for i in by_ids.inputs} == {contract.HISTORY_IDS, contract.CANDIDATE_IDS}


def test_a_workload_from_a_catalogue_smaller_than_twice_the_candidates():
    """16 items, history 5: 10 candidates are drawn from the 16 (once numpy's 'larger sample' error)."""
    workload = tiny_workload(make_items(16))
    assert all(len(u["candidate_ids"]) == 10 for u in workload.users)


def test_open_loop_phases_and_schedule():
    assert openloop.parse_phases("2:5,1:20") == [(2.0, 5.0), (1.0, 20.0)]
    times = openloop.schedule([(2.0, 5.0), (1.0, 20.0)])
    assert len(times) == 30 and times[:2] == [0.0, 0.2] and times[10] == 2.0 and times[-1] == 2.95
    for bad in ("2", "x:1", "0:5", "2:-1"):
        with pytest.raises(ValueError, match="phase"):
            openloop.parse_phases(bad)


def test_poisson_arrivals_keep_the_rate_and_are_seeded():
    phases = [(50.0, 40.0), (50.0, 200.0)]
    times = openloop.schedule(phases, "poisson", seed=3)
    first = [t for t in times if t < 50.0]
    assert abs(len(first) - 2000) < 150 and abs(len(times) - len(first) - 10000) < 400  # ~4 sd
    assert times == sorted(times) and times == openloop.schedule(phases, "poisson", seed=3)
    gaps = np.diff(first)
    assert 0.8 < gaps.std() / gaps.mean() < 1.2, "exponential gaps: as spread as they are long"
    with pytest.raises(ValueError, match="arrivals 'bursty'"):
        openloop.schedule(phases, "bursty")


def runner_rows(out_dir):
    runs = json.loads((out_dir / "runs.json").read_text())["runs"]
    return [{"requests": v["requests"]} for r in runs for k, v in r["locust"].items() if k != "Aggregated"]


def test_count_mismatch_is_reported():
    run = runner.RunResult(
        "x", "rank", 1.0, 1.0, {"rank": {"requests": 5, "failures": 0}}, {"rank": {"requests": 4}}
    )
    assert counts_agree(run) == ["rank: locust sent 5 requests, Triton counted 4"]


def test_perf_analyzer_csv_is_parsed(tmp_path):
    header = (
        "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
        "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency"
    )
    (tmp_path / "pa.csv").write_text(header + "\n4,120.5,10,300,2000,100,5000,50,5,7000,9000,9500,12000\n")
    row = perf_analyzer.parse(tmp_path / "pa.csv")
    assert row["concurrency"] == 4 and row["throughput_rps"] == 120.5
    assert row["queue_ms"] == 2.0 and row["compute_ms"] == pytest.approx(5.15) and row["p99_ms"] == 12.0


def _fake_locust(tmp_path, code: str, limit_s: float, cpus: set[int] | None = None):
    results, log = tmp_path / "x.json", tmp_path / "x.locust.log"
    log.write_text("last words of the fake locust\n")
    command = [sys.executable, "-c", code.format(results=results)]
    runner._run_locust(command, dict(os.environ), results, log, "x", limit_s=limit_s, grace_s=0.5, cpus=cpus)


def test_the_load_generator_runs_on_the_cpus_it_is_given(tmp_path):
    cpus = {max(os.sched_getaffinity(0))}  # `llmrec loadtest --load-cpus`, apart from the server's
    code = "import json, os; open(r'{results}', 'w').write(json.dumps(sorted(os.sched_getaffinity(0))))"
    _fake_locust(tmp_path, code, limit_s=30, cpus=cpus)
    assert json.loads((tmp_path / "x.json").read_text()) == sorted(cpus)


def test_a_locust_that_stalls_after_writing_its_results_is_stopped(tmp_path):
    started = time.monotonic()
    code = "import json, time; open(r'{results}', 'w').write(json.dumps([])); time.sleep(60)"
    _fake_locust(tmp_path, code, limit_s=60)
    assert time.monotonic() - started < 10


def test_a_locust_that_never_finishes_fails_with_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="did not finish within 1 s(.|\n)*last words"):
        _fake_locust(tmp_path, "import time; time.sleep(60)", limit_s=1)


def test_a_locust_that_fails_shows_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="exit 3(.|\n)*last words"):
        _fake_locust(tmp_path, "raise SystemExit(3)", limit_s=30)


def test_ramp_bisects_between_the_last_passing_and_the_failing_step(monkeypatch, tmp_path):
    """A server that keeps up to 100 req/s: steps x1.5 from 10 fail at 113.9, two bisections narrow it."""
    from types import SimpleNamespace

    def fake_run(target, workload, out_dir, name, model, rate, duration_s):
        return SimpleNamespace(name=name, offered_rps=rate, label=name, locust={})

    monkeypatch.setattr(runner, "locust_run", fake_run)
    monkeypatch.setattr(runner, "passes", lambda run, model, bound: run.offered_rps <= 100.0)
    monkeypatch.setattr(runner, "_summary", lambda run, model: "")
    saturation, reached, runs = runner.ramp(
        None, tmp_path, tmp_path, "rank", 10.0, 100.0, 1.0, factor=1.5, refine=2, progress=lambda _: None
    )
    assert reached and 75.9 < saturation <= 100.0
    assert saturation == pytest.approx(math.sqrt(75.9375 * 113.90625))  # 93.0: the first middle passed
    assert [r.name for r in runs][-4:] == ["rank-refine0", "rank-refine1", "rank-at50pct", "rank-at80pct"]
    assert runs[-1].offered_rps == pytest.approx(0.8 * saturation)
