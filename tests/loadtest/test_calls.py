"""The per-call log's figures (llmrec.loadtest.calls) on hand-made logs, and the no-batching copy."""

import math

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from llmrec.loadtest import calls


def write(path, rows):
    path.write_text("".join(f"{t},{name},{status},{ms}\n" for t, name, status, ms in rows))
    return calls.read(path)


def test_phases_keep_admitted_latency_apart_from_refusals(tmp_path):
    rows = [(t * 0.1, "similar", "OK", 5.0) for t in range(100)]  # base: 10 s of 5 ms
    rows += [
        (10 + t * 0.01, "similar", "OK" if t % 2 else "UNAVAILABLE", 8.0 if t % 2 else 0.3)
        for t in range(500)
    ]
    rows += [(15.0, "similar", "INTERNAL", 1.0)]
    log = write(tmp_path / "calls.csv", rows)
    got = calls.phases(log, {"base": (0, 10), "peak": (10, 16)})
    assert got["base"]["ok"] == 100 and got["base"]["refused"] == 0
    assert got["base"]["ok_p99_ms"] == 5.0
    peak = got["peak"]
    assert (peak["ok"], peak["refused"], peak["other_errors"]) == (250, 250, 1)
    assert peak["ok_p99_ms"] == 8.0  # the fast refusals do not pull the admitted latency down
    assert peak["offered_rps"] == pytest.approx(501 / 6, abs=0.1)


def test_recovery_is_the_first_clean_second_after_the_peak(tmp_path):
    rows = [
        (20 + t * 0.1, "similar", "UNAVAILABLE" if t < 25 else "OK", 50.0 if t < 35 else 5.0)
        for t in range(100)
    ]
    log = write(tmp_path / "calls.csv", rows)
    assert calls.recovery_s(log, peak_end=20, base_p99=5.0) == 4.0  # second 3 still has a 50 ms call
    assert calls.recovery_s(log, peak_end=20, base_p99=1.0) is None


def test_per_second_rows_and_the_summary(tmp_path):
    rows = [(t * 0.25, "similar", "OK", 4.0) for t in range(8)]  # seconds 0-1: 4 calls each
    rows += [
        (2 + t * 0.1, "similar", "UNAVAILABLE" if t % 2 else "OK", 1.0 if t % 2 else 9.0) for t in range(10)
    ]
    log = write(tmp_path / "calls.csv", rows)
    seconds = calls.per_second(log)
    assert [r["t"] for r in seconds] == [0, 1, 2]
    assert [(r["offered_rps"], r["ok"], r["refused"]) for r in seconds] == [(4, 4, 0), (4, 4, 0), (10, 5, 5)]
    assert seconds[2]["ok_p99_ms"] == 9.0
    total = calls.summary(log, 3.0)
    assert (total["requests"], total["failures"]) == (18, 5) and total["rps"] == 6.0


def test_drift_compares_the_second_half_with_the_first(tmp_path):
    rows = [(t, "rank", "OK", 10.0 if t < 50 else 12.0) for t in range(100)]
    got = calls.drift(write(tmp_path / "calls.csv", rows), windows=4)
    assert len(got["windows"]) == 4 and got["windows"][0]["ok_p99_ms"] == 10.0
    assert got["drift"] == pytest.approx(0.2)
    assert math.isnan(calls.drift([], windows=4)["drift"])


def test_the_no_batching_copy_drops_the_whole_dynamic_batching_block(tiny_repo, tmp_path):
    from llmrec.export.repository import without_batching

    copy = without_batching(tiny_repo["repo"], tmp_path / "copy")
    for path in [*copy.glob("*/config.pbtxt"), *copy.glob("*/configs/*.pbtxt")]:
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        assert not config.HasField("dynamic_batching"), path
    assert (copy / "similar_core" / "1").is_symlink()
