"""The compose stack built and run for real: `make test-deploy` (cpu target, podman; deploy/stack.py).

The images are built from this checkout, the stack runs the tiny exported models, and from the host the
project's gRPC client calls similar, rank and embed; the control API refuses a caller without the key; the
locust service runs a short load through the admission proxy; Prometheus (in the stack) must have scraped
Triton, the proxy and the client metrics,
and every PromQL query of the provisioned Grafana dashboard must return data. The stack is torn down also on
failure, after its logs are printed.

Needs root, podman (installed by the driver) and minutes: skipped unless LLMREC_TEST_DEPLOY=1, which
`make test-deploy` sets.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "llmrec.json"
GRPC = "127.0.0.1:8001"
PROMETHEUS = "http://127.0.0.1:9090"
LOAD_SECONDS = 30

pytestmark = pytest.mark.skipif(
    os.environ.get("LLMREC_TEST_DEPLOY") != "1",
    reason="builds images and runs the compose stack: `make test-deploy` (LLMREC_TEST_DEPLOY=1)",
)


def _driver():
    spec = importlib.util.spec_from_file_location("llmrec_deploy_stack", ROOT / "deploy" / "stack.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _workload(items, folder: Path) -> Path:
    """A load-test workload over the tiny catalogue (the locust service reads it from a mounted folder)."""
    from llmrec.loadtest.workload import Workload
    from llmrec.server.contract import item_text

    records = items.to_dict("records")
    ids, texts = [r["item_id"] for r in records], [item_text(r) for r in records]
    users = [
        {
            "history": texts[u : u + 5],
            "candidate_texts": texts[u + 5 : u + 25],
            "history_ids": ids[u : u + 5],
            "candidate_ids": ids[u + 5 : u + 25],
        }
        for u in range(10)
    ]
    return Workload(users=users, item_ids=ids, texts=texts, ks=[5, 10]).save(folder / "workload.json")


@pytest.fixture(scope="module")
def stack(tiny_repo, tmp_path_factory, request):
    driver = _driver()
    key = secrets.token_urlsafe(16)
    workload_dir = tmp_path_factory.mktemp("workload")
    _workload(tiny_repo["items"], workload_dir)
    failed_before = request.session.testsfailed
    try:
        driver.build("cpu")
        driver.up(tiny_repo["repo"], key, workload_dir)
        yield {"driver": driver, "key": key, "repo": tiny_repo["repo"], "workload_dir": workload_dir}
    finally:
        if request.session.testsfailed > failed_before or sys.exc_info()[0] is not None:
            print(driver.logs(tail=150))
        driver.down()
        left = [c["Names"] for c in driver.containers()]
        assert not left, f"compose down left containers: {left}"


def test_every_model_is_ready(stack):
    from llmrec.server.client import RankingClient

    with RankingClient(GRPC) as client:
        health = client.health()
    assert health["live"] and health["ready"], health
    assert all(health["models"].values()), health["models"]


def test_similar_rank_and_embed_answer_from_the_host(stack, tiny_repo):
    from llmrec.server.client import RankingClient, ServingError

    ids = tiny_repo["items"]["item_id"].tolist()
    with RankingClient(GRPC) as client:
        neighbours = client.similar(item_id=ids[0], k=5)
        assert len(neighbours) == 5 and ids[0] not in {n.item_id for n in neighbours}
        assert len(client.similar(text="Movie 3 (Drama)", k=3)) == 3
        scores = client.rank(history_ids=ids[:5], candidate_ids=ids[5:15])
        assert scores.shape == (10,) and all(map(float.__instancecheck__, scores.tolist()))
        vectors = client.embed(["Movie 1", "Movie 2"])
        assert vectors.shape[0] == 2
        with pytest.raises(ServingError) as bad:  # a named error, and the server's error counter
            client.similar(item_id="no-such-item", k=5)
        assert bad.value.status.endswith("INVALID_ARGUMENT"), bad.value


def test_the_control_api_refuses_a_caller_without_the_key(stack):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from llmrec.server.contract import GRPC_CONTROL_HEADER

    client = grpcclient.InferenceServerClient(GRPC)
    with pytest.raises(InferenceServerException):
        client.unload_model("similar")
    with pytest.raises(InferenceServerException):
        client.get_model_repository_index()
    assert client.get_model_repository_index(headers={GRPC_CONTROL_HEADER: stack["key"]})
    assert client.is_model_ready("similar")


@pytest.fixture(scope="module")
def load_run(stack):
    """The locust service runs LOAD_SECONDS of headless load against triton:8001 and exits 0 (no failure)."""
    driver = stack["driver"]
    env = {"LOCUST_HEADLESS": "true", "LOCUST_RUN_TIME": f"{LOAD_SECONDS}s", "LLMREC_LOAD_RATE": "20"}
    started = time.time()
    driver.up(stack["repo"], stack["key"], stack["workload_dir"], services=("locust",), extra_env=env)
    [container] = [c for c in driver.containers() if "locust" in c["Names"][0]]
    status = driver.run(["podman", "wait", container["Id"]], "podman wait locust", timeout=LOAD_SECONDS + 120)
    ended = time.time()
    output = subprocess.run(  # locust prints its statistics on stderr
        ["podman", "logs", container["Id"]],
        capture_output=True,
        text=True,
        env={**os.environ, **driver.podman_env()},
    )
    output = output.stdout + output.stderr
    return {"exit": int(status.strip().splitlines()[-1]), "log": output, "started": started, "ended": ended}


def test_a_short_locust_load_from_the_locust_service_has_no_failure(load_run):
    assert load_run["exit"] == 0, load_run["log"][-3000:]
    totals = re.findall(r"Aggregated\s+(\d+)\s+(\d+)\(", load_run["log"])
    assert totals, load_run["log"][-3000:]
    calls, failures = map(int, totals[-1])
    assert calls >= LOAD_SECONDS * 10 and failures == 0, load_run["log"][-3000:]


def _query(expr: str, at: float) -> list[dict]:
    url = f"{PROMETHEUS}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_prometheus_scraped_triton_and_the_client(load_run):
    at = load_run["ended"] - 3  # inside the load: the locust target is gone once it exits
    assert _query('up{job="triton"}', at)[0]["value"][1] == "1"
    assert _query('up{job="llmrec-client"}', at)[0]["value"][1] == "1"
    calls = _query('sum(llmrec_client_request_seconds_count{status="OK"})', at)
    assert calls and float(calls[0]["value"][1]) > 0, "no client calls scraped"
    # the load went through the admission proxy in front of Triton's gRPC port
    assert _query('up{job="admission"}', at)[0]["value"][1] == "1"
    passed = _query('sum(haproxy_backend_http_requests_total{proxy="triton"})', at)
    assert passed and float(passed[0]["value"][1]) > 0, "no call went through the admission proxy"


def test_every_dashboard_query_returns_data(load_run):
    at = load_run["ended"] - 3
    panels = json.loads(DASHBOARD.read_text())["panels"]
    empty = [f"{p['title']}: {t['expr']}" for p in panels for t in p["targets"] if not _query(t["expr"], at)]
    assert not empty, "dashboard queries with no data:\n" + "\n".join(empty)


def test_the_images_run_the_project_wheel_of_this_checkout(stack):
    """What the server runs is the llmrec built from these sources (not a stale or different copy)."""
    driver = stack["driver"]
    digest = "import hashlib, llmrec.server.launcher as m; print(hashlib.sha256(open(m.__file__, 'rb').read()).hexdigest())"
    out = driver.run(
        ["podman", "run", "--rm", driver.IMAGES["triton"], "python3", "-c", digest], "podman run"
    )
    assert out.strip() == hashlib.sha256((ROOT / "server" / "launcher.py").read_bytes()).hexdigest()


def test_sigterm_stops_the_server_container_cleanly_within_10_s(stack, load_run):
    """Last: `docker stop` (SIGTERM) to the triton container; `llmrec serve` is PID 1 there."""
    driver = stack["driver"]
    [triton] = [c for c in driver.containers() if c["Names"][0] == f"{driver.PROJECT}-triton-1"]
    started = time.monotonic()
    driver.run(["podman", "stop", "-t", "15", triton["Id"]], "podman stop triton")
    took = time.monotonic() - started
    state = json.loads(driver.run(["podman", "inspect", triton["Id"]], "podman inspect"))[0]["State"]
    assert took < 10 and state["ExitCode"] == 0, (took, state)
