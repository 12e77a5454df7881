"""Latency on both sides of the wire.

Client side: the `llmrec_client_request_seconds` histogram (labels: method, status), exposed on a port
with `expose(port)` for Prometheus. Server side: Triton's own counters on its metrics port, read with
`scrape()`; `server_split(before, after)` turns two scrapes into per-model request counts and mean
queue / compute times over the window between them.

A public model is an ensemble ([gate ->] core, llmrec.server.ensembles), and Triton's ensemble counters
book one failed request as two failures; so a public model's row is assembled from exact counts: its
successes from the ensemble, its failures from what its gate, if any, and the core refused (Triton's failures of
those, e.g. a full queue) plus the error responses the core returned itself (llmrec_request_errors),
its batch size and queue and compute times from the core, where the batching happens.
"""

from __future__ import annotations

import time
import urllib.request

from prometheus_client import Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from llmrec.server import contract, ensembles

REQUEST_SECONDS = Histogram(
    "llmrec_client_request_seconds",
    "Client-side latency of llmrec gRPC calls, by method and gRPC status.",
    ["method", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


def observe(method: str, status: str, seconds: float) -> None:
    REQUEST_SECONDS.labels(method=method, status=status).observe(seconds)


def expose(port: int, host: str = "127.0.0.1") -> None:
    """Serve the client metrics at http://host:port/metrics (a daemon thread)."""
    start_http_server(port, addr=host)


# The server's cumulative counters that the split needs (microseconds, except the counts): Triton's own and
# the error responses the llmrec python models count themselves.
SERVER_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
    "llmrec_request_errors",  # the python models' error responses, which Triton books as successes
)


def scrape(url: str, timeout: float = 5.0) -> dict[tuple[str, str], float]:
    """{(counter, model): value} summed over versions, from Triton's /metrics."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    out: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in SERVER_COUNTERS and "model" in sample.labels:
                key = (name, sample.labels["model"])
                out[key] = out.get(key, 0.0) + sample.value
    return out


def settled_scrape(url: str, timeout_s: float = 10.0) -> dict[tuple[str, str], float]:
    """`scrape` once the counters stop moving (two reads 0.2 s apart agree; the last read after `timeout_s`):
    a python model books a request after its response has gone out, so a read right after the last answer
    can miss it."""
    deadline, last = time.monotonic() + timeout_s, scrape(url)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = scrape(url)
        if now == last:
            return now
        last = now
    return last


def server_split(before: dict, after: dict) -> dict[str, dict[str, float]]:
    """Per model over the window: requests, failures, mean batch size and mean ms per request stage."""

    def delta(counter: str, model: str) -> float:
        return after.get((counter, model), 0.0) - before.get((counter, model), 0.0)

    rows = {}
    for model in sorted({m for _, m in after}):
        requests = delta("nv_inference_request_success", model) + delta("nv_inference_request_failure", model)
        if requests > 0:
            rows[model] = _row(model, requests, delta("nv_inference_request_failure", model), delta)
    for model in contract.MODELS:
        core, gate = ensembles.core(model), ensembles.gate(model)
        if model not in rows or core not in rows:
            continue
        failures = sum(delta("nv_inference_request_failure", m) for m in (core, gate))
        failures += delta("llmrec_request_errors", model)
        requests = delta("nv_inference_request_success", model) + failures
        row = _row(core, requests, failures, delta)
        row["request_ms"] = delta("nv_inference_request_duration_us", model) / requests / 1e3
        rows[model] = row
    return rows


def _row(model: str, requests: float, failures: float, delta) -> dict[str, float]:
    executions = delta("nv_inference_exec_count", model)
    per_request = {
        f"{stage}_ms": delta(f"nv_inference_{stage}_duration_us", model) / requests / 1e3
        for stage in ("request", "queue", "compute_input", "compute_infer", "compute_output")
    }
    return {
        "requests": requests,
        "failures": failures + delta("llmrec_request_errors", model),
        "mean_batch": delta("nv_inference_count", model) / executions if executions else 0.0,
        **per_request,
    }
