"""Export on the tiny models: valid ONNX, dynamic axes, parity with PyTorch, tokenizer parity, layout."""

import json

import numpy as np
import onnx
import pytest
import torch

from llmrec.export import parity
from llmrec.export.repository import export_index
from llmrec.server import contract, ensembles, item_index, runtime, versions

pytestmark = pytest.mark.slow


def test_repository_layout(tiny_repo):
    repo = tiny_repo["repo"]
    for model, files in {
        "embed": [runtime.NOTELLM_ONNX, runtime.NOTELLM_META, "model.py", "tokenizer/tokenizer.json"],
        "rank": [runtime.ENCODER_ONNX, runtime.RANKER_META, runtime.RANKER_HEAD, "model.py"],
        "similar": [item_index.INDEX_VECTORS, item_index.INDEX_IDS, "model.py"],
    }.items():
        core = f"{model}_core"
        assert (repo / core / "config.pbtxt").is_file()
        for name in files + [versions.MANIFEST]:
            assert (repo / core / "1" / name).exists(), f"{core}/1/{name}"
        assert versions.problem(repo / core / "1") is None
        # the public ensemble, and its gate where the core merges requests (llmrec.server.ensembles)
        assert (repo / model / "config.pbtxt").is_file() and (repo / model / "1").is_dir()
        gated = contract.MODELS[model].merges_requests
        assert (repo / f"{model}_gate" / "1" / "model.py").is_file() == gated
    for model in contract.MODELS.values():  # the warm-up requests' inputs, as the configs name them
        for tensor, _, values in ensembles.warmup_inputs(model):
            path = repo / ensembles.core(model.name) / "warmup" / ensembles.warmup_file(tensor.name)
            assert path.read_bytes() == values, path
    assert (repo / "embed_core" / "warmup" / "text_utf8").is_file()
    assert not list(repo.glob("*/.*.tmp")), "no half-written versions left behind"


def test_graphs_are_valid_with_dynamic_batch_and_sequence(tiny_repo):
    for path, inputs in (
        (tiny_repo["repo"] / "embed_core" / "1" / runtime.NOTELLM_ONNX, {"input_ids", "emb_index"}),
        (
            tiny_repo["repo"] / "rank_core" / "1" / runtime.ENCODER_ONNX,
            {"input_ids", "attention_mask", "token_type_ids"},
        ),
    ):
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        assert {i.name for i in model.graph.input} == inputs
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        ids = next(i for i in model.graph.input if i.name == "input_ids")
        dims = ids.type.tensor_type.shape.dim
        assert all(d.dim_param for d in dims), f"{path.name}: input_ids axes must be dynamic, got {dims}"


def test_parity_reports_cover_several_padded_shapes(tiny_repo):
    for name, report in tiny_repo["reports"].items():
        assert report["ok"] and report["max_abs"] <= parity.FP32_TOLERANCE, name
        assert len({(r["batch"], r["seq"]) for r in report["rows"]}) >= 2, name


def test_served_vectors_match_pytorch_and_the_index(tiny_repo):
    from llmrec.training.embed_io import load_vectors

    embedder = runtime.NoteEmbedder(tiny_repo["repo"] / "embed_core" / "1")
    records = tiny_repo["items"].to_dict("records")
    got = embedder.embed(records)
    ids, want = load_vectors(tiny_repo["notellm"] / "item_vectors.npy")
    assert ids == tiny_repo["items"]["item_id"].tolist()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_served_ranker_matches_the_trained_one(tiny_repo):
    from llmrec.server.contract import item_text
    from llmrec.training.eaar.model import Ranker

    texts = [item_text(r) for r in tiny_repo["items"].to_dict("records")]
    scorer = runtime.RankScorer(tiny_repo["repo"] / "rank_core" / "1")
    trained = Ranker.load(tiny_repo["eaar"])
    with torch.no_grad():
        tokens, mask = trained.encoder.encode_texts(texts[:5])
        want, _ = trained.pool_items(tokens, mask)
    np.testing.assert_allclose(scorer.item_vectors(texts[:5]).numpy(), want.numpy(), atol=1e-4)
    scores = scorer.score([(texts[:3], texts[3:8]), (texts[:1], texts[8:10])])
    assert [s.shape for s in scores] == [(5,), (2,)]


def test_a_malformed_index_is_refused_at_export(tmp_path):
    with pytest.raises(ValueError, match="has 2 vectors for 3 ids"):
        export_index(tmp_path, ["a", "b", "c"], np.eye(2, dtype=np.float32))
    assert not (tmp_path / "similar_core" / "1").exists()


def test_an_index_of_another_dimension_than_embed_is_refused_at_export(tiny_repo, tmp_path):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(tiny_repo["repo"], repo)
    with pytest.raises(
        ValueError, match=r"the item index is 8-d but the embed model \(version 1\) gives 16-d"
    ):
        export_index(repo, ["a", "b"], np.eye(2, 8, dtype=np.float32), version=2)
    assert not (repo / "similar_core" / "2").exists()


def test_a_sealed_version_names_what_changed(tiny_repo, tmp_path):
    import shutil

    folder = tmp_path / "1"
    shutil.copytree(tiny_repo["repo"] / "similar_core" / "1", folder)
    assert versions.problem(folder) is None
    vectors = folder / item_index.INDEX_VECTORS
    vectors.write_bytes(vectors.read_bytes()[:-7])  # a truncated copy
    assert "index.npy has" in versions.problem(folder) and "truncated" in versions.problem(folder)
    vectors.unlink()
    assert "index.npy is missing" in versions.problem(folder)


def test_ranker_runtime_is_safe_to_call_from_threads(tiny_repo):
    """The benchmark's in-process path calls one RankScorer from 8 threads (found: a shared Rust tokenizer
    reconfigured per call raised 'Already borrowed')."""
    from concurrent.futures import ThreadPoolExecutor

    from llmrec.server.contract import item_text

    texts = [item_text(r) for r in tiny_repo["items"].to_dict("records")]
    scorer = runtime.RankScorer(tiny_repo["repo"] / "rank_core" / "1")
    want = scorer.score([(texts[:5], texts[5:25])])[0]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: scorer.score([(texts[:5], texts[5:25])])[0], range(32)))
    for got in results:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_rank_scores_by_id_equal_scores_by_text(tiny_repo):
    """Export computed the catalogue's rank vectors by id through the served graph: the same items give the
    same scores whichever way they are named, and a load encodes nothing to warm its cache."""
    from llmrec.server.contract import item_text

    records = tiny_repo["items"].to_dict("records")
    ids, texts = [r["item_id"] for r in records], [item_text(r) for r in records]
    folder = tiny_repo["repo"] / "rank_core" / "1"
    assert json.loads((folder / runtime.RANK_ITEM_IDS).read_text()) == ids
    scorer = runtime.RankScorer(folder)
    assert len(scorer.cache) == len(set(texts)) and scorer.cache.misses == 0  # warmed from items.npy
    by_text = scorer.score([(texts[:5], texts[5:25]), (texts[30:31], texts[:3])])
    by_id = scorer.score(
        [(runtime.ById(ids[:5]), runtime.ById(ids[5:25])), (runtime.ById(ids[30:31]), texts[:3])]
    )
    for want, got in zip(by_text, by_id, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    cold = runtime.RankScorer(folder, warm=False)  # vectors encoded now vs those the export job wrote
    np.testing.assert_allclose(cold.score([(texts[:5], texts[5:25])])[0], by_text[0], rtol=1e-4, atol=1e-5)


def test_parity_outside_tolerance_refuses_the_graph():
    good = parity.compare(np.zeros(3), np.zeros(3), parity.FP32_TOLERANCE)
    bad = parity.compare(np.full(3, 1e-3), np.zeros(3), parity.FP32_TOLERANCE)
    assert parity.summary([good], "embed")["ok"]
    with pytest.raises(ValueError, match=r"the embed graph differs from PyTorch by 1.00e-03 > 0.0001"):
        parity.summary([good, bad], "embed")
