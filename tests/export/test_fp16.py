"""fp16 graphs: written by `export(fp16=True)` with their own parity rows, chosen by the config parameter
`precision`, and served by the real tritonserver."""

import json
import re

import numpy as np
import pytest

from llmrec.export import parity, repository
from llmrec.server import runtime
from llmrec.server.client import RankingClient
from llmrec.server.contract import item_text
from llmrec.server.launcher import TritonServer
from llmrec.training.embed_io import load_vectors


@pytest.fixture(scope="module")
def fp16_repo(tiny_runs, tmp_path_factory):
    repo = tmp_path_factory.mktemp("fp16") / "repo"
    records = tiny_runs["items"].to_dict("records")
    reports = {
        "embed": repository.export_embed(repo, tiny_runs["notellm"], records, fp16=True),
        "rank": repository.export_rank(
            repo,
            tiny_runs["eaar"],
            [r["item_id"] for r in records],
            [item_text(r) for r in records],
            fp16=True,
        ),
    }
    repository.export_index(repo, *load_vectors(tiny_runs["notellm"] / "item_vectors.npy"))
    return {"repo": repo, "reports": reports, "records": records}


@pytest.mark.slow
def test_fp16_graphs_have_their_own_parity_rows(fp16_repo):
    for name, graph in (("embed", runtime.NOTELLM_ONNX), ("rank", runtime.ENCODER_ONNX)):
        folder = fp16_repo["repo"] / f"{name}_core" / "1"
        assert runtime.graph_path(folder, graph, "fp16").is_file()
        report = fp16_repo["reports"][name]["fp16"]
        assert report["ok"] and report["max_abs"] <= parity.FP16_TOLERANCE, name
        assert len(report["rows"]) == len(fp16_repo["reports"][name]["rows"])


@pytest.mark.slow
def test_fp16_runtime_stays_close_to_fp32(fp16_repo):
    folder = fp16_repo["repo"] / "embed_core" / "1"
    records = fp16_repo["records"][:8]
    fp32 = runtime.NoteEmbedder(folder).embed(records)
    fp16 = runtime.NoteEmbedder(folder, "fp16").embed(records)
    assert fp16.dtype == np.float32  # fp32 in and out
    np.testing.assert_allclose(fp16, fp32, atol=parity.FP16_TOLERANCE)


def test_precision_comes_from_the_model_config_and_is_checked(tmp_path):
    config = {"parameters": {"precision": {"string_value": "fp16"}}}
    assert runtime.model_precision(json.dumps(config)) == "fp16"
    assert runtime.model_precision("{}") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        runtime.model_precision({"parameters": {"precision": {"string_value": "int8"}}})
    with pytest.raises(FileNotFoundError, match=r"run `llmrec export --fp16`"):
        runtime._session(runtime.graph_path(tmp_path, runtime.ENCODER_ONNX, "fp16"))


@pytest.mark.integration
@pytest.mark.slow
def test_the_server_runs_the_fp16_graphs_when_configured(fp16_repo, tmp_path):
    repo = fp16_repo["repo"]
    for model in ("embed", "rank"):
        config = repo / f"{model}_core" / "config.pbtxt"
        text, n = re.subn(r'string_value: "fp32"', 'string_value: "fp16"', config.read_text())
        assert n == 1, f"{model}/config.pbtxt has no precision parameter"
        config.write_text(text)
    texts = [item_text(r) for r in fp16_repo["records"]]
    server = TritonServer(repo, log_path=tmp_path / "tritonserver.log")
    with server, RankingClient(server.grpc_url, timeout=60.0) as client:
        vectors = client.embed(["Movie 3"])
        scores = client.rank(texts[:3], texts[3:8])
    item = [{"title": "Movie 3", "topic": "", "content": ""}]
    fp16 = runtime.NoteEmbedder(repo / "embed_core" / "1", "fp16").embed(item)
    fp32 = runtime.NoteEmbedder(repo / "embed_core" / "1").embed(item)
    np.testing.assert_allclose(vectors, fp16, atol=1e-6)  # the server ran the fp16 graph
    assert np.abs(fp16 - fp32).max() > 0, "fp16 and fp32 graphs gave identical vectors: nothing to tell apart"
    local = runtime.RankScorer(repo / "rank_core" / "1", precision="fp16").score([(texts[:3], texts[3:8])])[0]
    np.testing.assert_allclose(scores, local, atol=1e-5)
