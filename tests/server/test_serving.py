"""Through the real tritonserver (the nvidia-pytriton binary) on the tiny exported models: every public
model over gRPC and HTTP, bad requests, mixed batches, metrics and index versions."""

import asyncio
import json
import os
import shutil
import time
import urllib.request

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from llmrec.server import contract, item_index, metrics, runtime
from llmrec.server.client import AsyncRankingClient, RankingClient, ServingError
from llmrec.server.contract import item_text
from llmrec.server.launcher import ServerError, TritonServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def served(tiny_repo, tmp_path_factory):
    repo = tmp_path_factory.mktemp("served") / "repo"
    shutil.copytree(tiny_repo["repo"], repo)  # the index-version test writes into it
    with TritonServer(repo, log_path=repo.parent / "tritonserver.log") as server:
        client = RankingClient(server.grpc_url, timeout=30.0, control_key=server.control_key)
        yield {**tiny_repo, "server": server, "client": client, "repo": repo}
        client.close()


def texts(served, n, start=0):
    return [item_text(r) for r in served["items"].to_dict("records")[start : start + n]]


def test_health(served):
    state = served["client"].health()
    assert state["live"] and state["ready"] and all(state["models"].values())


def test_embed_over_grpc_matches_the_runtime(served):
    vectors = served["client"].embed(
        ["Toy Story", '{"title": "Heat", "topic": "1990s", "content": "Crime."}']
    )
    assert vectors.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    local = runtime.NoteEmbedder(served["repo"] / "embed_core" / "1").embed(
        [{"title": "Toy Story", "topic": "", "content": ""}]
    )
    np.testing.assert_allclose(vectors[0], local[0], atol=1e-5)


def test_similar_by_id_and_by_text(served):
    client = served["client"]
    by_id = client.similar(item_id="3", k=5)
    assert len(by_id) == 5 and "3" not in [n.item_id for n in by_id]
    assert [n.score for n in by_id] == sorted((n.score for n in by_id), reverse=True)
    by_text = client.similar(text="Movie 3", k=39)
    assert len({n.item_id for n in by_text}) == 39
    assert len(client.similar(item_id="3", k=39)) == 39  # the whole catalogue but the item itself


def test_similar_by_vector_equals_similar_by_the_same_text(served):
    client = served["client"]
    vector = client.embed(["Movie 3"])[0]
    by_vector = client.similar(vector=vector * 7.0, k=5)  # any scale: the server normalises
    by_text = client.similar(text="Movie 3", k=5)
    assert [n.item_id for n in by_vector] == [n.item_id for n in by_text]
    np.testing.assert_allclose([n.score for n in by_vector], [n.score for n in by_text], atol=1e-5)


def test_rank_over_grpc_matches_the_runtime(served):
    history, candidates = texts(served, 4), texts(served, 6, start=10)
    scores = served["client"].rank(history, candidates)
    local = runtime.RankScorer(served["repo"] / "rank_core" / "1").score([(history, candidates)])[0]
    assert scores.shape == (6,)
    np.testing.assert_allclose(scores, local, rtol=1e-4, atol=1e-4)


def test_rank_by_item_ids_equals_rank_by_texts(served):
    ids = [r["item_id"] for r in served["items"].to_dict("records")]
    client = served["client"]
    by_text = client.rank(texts(served, 4), texts(served, 6, start=10))
    by_id = client.rank(history_ids=ids[:4], candidate_ids=ids[10:16])
    mixed = client.rank(texts(served, 4), candidate_ids=ids[10:16])
    np.testing.assert_allclose(by_id, by_text, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mixed, by_text, rtol=1e-4, atol=1e-5)


def test_rank_caches_item_vectors_and_reports_it(served):
    # the catalogue's texts are cached at load; these 8 are not in it
    history = [f"Unseen film {i} (2031)" for i in range(3)]
    candidates = [f"Another unseen film {i}" for i in range(5)]
    first = served["client"].rank(history, candidates)  # 8 new texts: misses
    again = served["client"].rank(history, candidates)  # the same 8: hits
    np.testing.assert_allclose(again, first, rtol=1e-6, atol=1e-6)
    counts = {}
    for family in text_string_to_metric_families(
        urllib.request.urlopen(served["server"].metrics_url, timeout=5).read().decode()
    ):
        for sample in family.samples:
            if sample.name.startswith("llmrec_rank_item_cache"):
                key = (sample.name, sample.labels.get("result"))  # summed over the model's instances
                counts[key] = counts.get(key, 0.0) + sample.value
    assert counts[("llmrec_rank_item_cache_lookups_total", "hit")] >= 8
    assert counts[("llmrec_rank_item_cache_lookups_total", "miss")] >= 8
    assert counts[("llmrec_rank_item_cache_items", None)] >= len(served["items"]) + 8


def test_every_model_over_http(served):
    client = httpclient.InferenceServerClient(served["server"].http_url)

    def strings(name, rows):
        tensor = httpclient.InferInput(name, [len(rows), len(rows[0])], "BYTES")
        tensor.set_data_from_numpy(np.array(rows, dtype=np.object_))
        return tensor

    out = client.infer("embed", [strings(contract.TEXT, [["Movie 1"], ["Movie 2"]])]).as_numpy(
        contract.VECTOR
    )
    assert out.shape == (2, 16)
    k = httpclient.InferInput(contract.K, [1, 1], "INT32")
    k.set_data_from_numpy(np.array([[4]], dtype=np.int32))
    result = client.infer("similar", [strings(contract.ITEM_ID, [["7"]]), k])
    assert result.as_numpy(contract.ITEM_IDS).shape == (1, 4) and result.as_numpy(contract.SCORES).shape == (
        1,
        4,
    )
    scores = client.infer(
        "rank",
        [strings(contract.HISTORY, [texts(served, 2)]), strings(contract.CANDIDATES, [texts(served, 3, 5)])],
    )
    assert scores.as_numpy(contract.SCORES).shape == (1, 3)


BAD = [
    ("embed", {"texts": [""]}, "TEXT[0] is empty"),
    ("embed", {"texts": ["x" * 2**20]}, "TEXT[0] is 1048576 bytes; the limit is 16384"),
    ("embed", {"texts": [b"caf\xe9"]}, "not valid UTF-8"),
    ("similar", {"item_id": "3", "k": 0}, "K must be positive, got 0"),
    ("similar", {"item_id": "3", "k": 40}, "K=40 but only 39 catalogue items"),
    ("similar", {"text": "Movie", "k": 41}, "K=41 but only 40 catalogue items"),
    ("similar", {"item_id": "no-such-item", "k": 3}, "unknown item id 'no-such-item'"),
    ("similar", {"vector": np.ones(15), "k": 3}, "VECTOR must have 16 values per row"),
    ("similar", {"vector": np.zeros(16), "k": 3}, "VECTOR row 0 is all zeros"),
    ("similar", {"vector": np.full(16, np.nan), "k": 3}, "VECTOR contains NaN or infinite values"),
    ("rank", {"history": [""], "candidates": ["Movie 1"]}, "HISTORY[0][0] is empty"),
    (
        "rank",
        {"history_ids": ["3", "nope"], "candidates": ["Movie 1"]},
        "HISTORY_IDS: unknown item id 'nope'",
    ),
    ("rank", {"history": ["Movie 1"], "candidate_ids": ["x" * 20_000]}, "CANDIDATE_IDS[0][0] is 20000 bytes"),
]


@pytest.mark.parametrize("method, kwargs, message", BAD, ids=[b[2][:30] for b in BAD])
def test_bad_requests_get_a_clear_error_and_the_server_keeps_serving(served, method, kwargs, message):
    client = served["client"]
    with pytest.raises(
        ServingError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
    ) as error:
        getattr(client, method)(**kwargs)
    assert error.value.status == "StatusCode.INVALID_ARGUMENT"
    assert client.similar(item_id="1", k=2)  # still serving


def raw_grpc(served, model, inputs):
    client = grpcclient.InferenceServerClient(served["server"].grpc_url)
    with pytest.raises(Exception) as error:
        client.infer(model, inputs)
    return str(error.value)


def test_wrong_dtype_and_shape_are_refused_by_the_server(served):
    k = grpcclient.InferInput(contract.K, [1, 1], "FP32")
    k.set_data_from_numpy(np.array([[3.0]], dtype=np.float32))
    item = grpcclient.InferInput(contract.ITEM_ID, [1, 1], "BYTES")
    item.set_data_from_numpy(np.array([[b"1"]], dtype=np.object_))
    assert "input 'K' data-type is 'FP32', but model 'similar' expects 'INT32'" in raw_grpc(
        served, "similar", [item, k]
    )
    text = grpcclient.InferInput(contract.TEXT, [1, 2], "BYTES")
    text.set_data_from_numpy(np.array([[b"a", b"b"]], dtype=np.object_))
    message = raw_grpc(served, "embed", [text])
    assert "INVALID_ARGUMENT" in message and "'TEXT'" in message and "shape" in message, message
    assert served["client"].health()["ready"]


def test_a_bad_request_does_not_fail_the_others_in_its_batch(served):
    async def burst():
        async with AsyncRankingClient(served["server"].grpc_url, timeout=60.0) as client:
            calls = [client.embed([f"Movie {i}" if i % 4 else ""]) for i in range(24)]
            return await asyncio.gather(*calls, return_exceptions=True)

    before = metrics.scrape(served["server"].metrics_url)
    results = asyncio.run(burst())
    failed = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert failed == list(range(0, 24, 4))
    assert all(isinstance(results[i], ServingError) and "is empty" in str(results[i]) for i in failed)
    assert all(results[i].shape == (1, 16) for i in range(24) if i % 4)
    # Triton books a request's statistics when it releases the request, which can come after the client has
    # its response: wait (bounded) until all 24 are booked rather than read a half-updated scrape.
    deadline = time.monotonic() + 10
    while True:
        split = metrics.server_split(before, metrics.scrape(served["server"].metrics_url))
        if split["embed"]["requests"] >= 24 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    # Triton counts all 24 but books errors returned by a python model as successes; the models count them
    # themselves (llmrec_request_errors_total), which the split adds to Triton's failures.
    assert split["embed"]["requests"] == 24
    assert split["embed"]["failures"] == 6


def test_metrics_endpoint_counts_requests_with_latency_summaries(served):
    served["client"].similar(item_id="2", k=3)
    text = urllib.request.urlopen(served["server"].metrics_url, timeout=5).read().decode()
    assert 'nv_inference_request_success{model="similar"' in text
    assert "nv_inference_queue_duration_us" in text and "nv_inference_request_summary_us" in text


def test_a_bad_index_version_fails_its_load_and_the_old_one_keeps_serving(served):
    client, repo = served["client"], served["repo"]
    version2 = repo / "similar_core" / "2"
    shutil.copytree(repo / "similar_core" / "1", version2)
    (version2 / item_index.INDEX_IDS).write_text(json.dumps(["only-one-id"]))
    with pytest.raises(ServingError, match="has 40 vectors for 1 ids"):
        client.reload("similar")
    assert len(client.similar(item_id="3", k=3)) == 3  # version 1 still answers

    ids = json.loads((repo / "similar_core" / "1" / item_index.INDEX_IDS).read_text())
    (version2 / item_index.INDEX_IDS).write_text(json.dumps([f"v2-{i}" for i in ids]))
    client.reload("similar")
    assert client.similar(item_id="v2-3", k=2)[0].item_id.startswith("v2-")
    with pytest.raises(ServingError, match="unknown item id '3'"):
        client.similar(item_id="3", k=2)


def test_similar_serves_a_faiss_index_with_the_answers_of_exact_search(served):
    from llmrec.export.repository import export_index

    client, repo = served["client"], served["repo"]
    v1 = repo / "similar_core" / "1"
    ids = json.loads((v1 / item_index.INDEX_IDS).read_text())
    vectors = np.load(v1 / item_index.INDEX_VECTORS)
    exact = item_index.ItemIndex(ids, vectors)
    meta = export_index(repo, ids, vectors, 9, item_index.IndexSpec(kind="hnsw"), log=lambda _: None)
    assert meta["kind"] == "hnsw" and meta["recall"]["recall"] == 1.0
    client.reload("similar")
    for item in ids[:5]:
        got = client.similar(item_id=item, k=5)
        want_ids, want_scores = exact.search(exact.vectors_of([item]), 5, exclude=[item])
        assert [n.item_id for n in got] == want_ids[0]
        np.testing.assert_allclose([n.score for n in got], want_scores[0], atol=1e-5)
    query = client.embed(["Movie 3"])[0]  # text and vector queries go through the FAISS index as well
    by_text, by_vector = client.similar(text="Movie 3", k=5), client.similar(vector=query, k=5)
    want_ids, _ = exact.search(query[None], 5, exclude=[None])
    assert [n.item_id for n in by_text] == [n.item_id for n in by_vector] == want_ids[0]


def test_launcher_fails_fast_with_the_log(tmp_path):
    repo = tmp_path / "repo"
    (repo / "boom" / "1").mkdir(parents=True)
    (repo / "boom" / "config.pbtxt").write_text('name: "boom"\nbackend: "python"\n')
    (repo / "boom" / "1" / "model.py").write_text("raise RuntimeError('boom at import')\n")
    server = TritonServer(repo, log_path=tmp_path / "log", startup_timeout=120)
    with pytest.raises(ServerError, match="boom at import"):
        server.start()
    assert not group_alive(server.process.pid), "python stubs outlived the server"


def group_alive(pgid: int, wait_s: float = 5.0) -> bool:
    """Whether a process of the group is still there after `wait_s` (killed ones take a moment to go)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        time.sleep(0.1)
    return True


def test_a_pinned_server_and_its_python_stubs_run_on_the_given_cpus(tiny_repo, tmp_path):
    # `llmrec loadtest --server-cpus`: the server apart from the load generator's CPUs
    cpus = {min(os.sched_getaffinity(0))}
    with TritonServer(tiny_repo["repo"], log_path=tmp_path / "log", cpus=cpus) as server:
        assert len(RankingClient(server.grpc_url).similar(item_id="2", k=3)) == 3
        processes = [psutil.Process(server.process.pid)]
        processes += processes[0].children(recursive=True)
        assert len(processes) > 3, "tritonserver and its python stubs"
        assert {p.pid: set(p.cpu_affinity()) for p in processes} == {p.pid: cpus for p in processes}


def test_launcher_refuses_a_missing_repository(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `llmrec export` first"):
        TritonServer(tmp_path / "nothing")


def test_every_triton_metric_on_the_dashboard_is_exported_by_the_server(served):
    from tests.deploy.test_compose import dashboard_metrics

    served["client"].rank(texts(served, 2), texts(served, 2, start=5))  # rank's cache metrics exist
    with pytest.raises(ServingError):
        served["client"].embed([""])  # and the error counter
    text = urllib.request.urlopen(served["server"].metrics_url, timeout=5).read().decode()
    server_side = ("nv_", "llmrec_rank_", "llmrec_request_")
    missing = [m for m in dashboard_metrics() if m.startswith(server_side) and m not in text]
    assert not missing, f"the Grafana dashboard queries metrics the server does not export: {missing}"
