"""The `similar` index: exact vs FAISS on small catalogues, the recall gate, load checks, the query's exclusion."""

import json

import numpy as np
import pytest

from llmrec.server import item_index
from llmrec.server.contract import BadRequest


def clustered(n: int, d: int = 16, topics: int = 40, seed: int = 0) -> np.ndarray:
    """Unit vectors in topics (as real item embeddings come), not uniform noise."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, d))
    x = centres[rng.integers(0, topics, n)] + 0.4 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def catalogue():
    vectors = clustered(3_000)
    return [f"item{i}" for i in range(len(vectors))], vectors


@pytest.mark.parametrize("kind", ["hnsw", "ivf_flat"])
def test_faiss_index_agrees_with_exact_search(tmp_path, catalogue, kind):
    ids, vectors = catalogue
    meta = item_index.write(tmp_path, ids, vectors, item_index.IndexSpec(kind=kind), log=lambda _: None)
    assert meta["kind"] == kind and meta["recall"]["recall"] >= 0.95
    assert (tmp_path / item_index.INDEX_ANN).is_file()
    ann = item_index.ItemIndex.load(tmp_path)
    exact = item_index.ItemIndex(ids, vectors)
    queries = ids[::50]
    got, got_scores = ann.search(ann.vectors_of(queries), 10, exclude=queries)
    want, want_scores = exact.search(exact.vectors_of(queries), 10, exclude=queries)
    overlap = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want, strict=True)])
    assert overlap >= 0.95
    assert all(q not in g for q, g in zip(queries, got, strict=True)), "the query item comes back"
    np.testing.assert_array_less(-1e-6, got_scores[:, :-1] - got_scores[:, 1:])  # best first
    # returned scores are the true cosines of the returned items
    for q, row, scores in zip(queries, got, got_scores, strict=True):
        np.testing.assert_allclose(ann.vectors_of(row) @ ann.vectors_of([q])[0], scores, atol=1e-5)
    # a vector query (not normalised) and no exclusion: the item itself comes first
    found, _ = ann.search(3.0 * ann.vectors_of(queries[:3]), 5, exclude=[None] * 3)
    assert [f[0] for f in found] == queries[:3]


def test_the_recall_gate_refuses_an_index_under_its_floor(tmp_path, catalogue):
    ids, vectors = catalogue
    spec = item_index.IndexSpec(kind="ivf_pq", pq_bytes=1, nlist=8, recall_floor=0.99)  # 1 byte per vector
    with pytest.raises(
        ValueError, match=r"reaches recall@10 0\.\d+ against exact search, under the floor 0\.99"
    ):
        item_index.write(tmp_path, ids, vectors, spec, log=lambda _: None)
    assert not (tmp_path / item_index.INDEX_ANN).exists()


def test_recall_counts_tied_neighbours_as_found():
    vectors = np.array([[1, 0], [0.6, 0.8], [0.6, 0.8], [0, 1]], np.float32)  # items 1 and 2 are equal
    rows = np.array([0])
    assert item_index.recall_at_k(vectors, rows, np.array([[2]]), np.array([0.6]), 1) == 1.0
    assert item_index.recall_at_k(vectors, rows, np.array([[3]]), np.array([0.6]), 1) == 0.0
    assert item_index.recall_at_k(vectors, rows, np.array([[0, -1]]), np.array([0.6]), 1) == 0.0


def test_choose_kind_by_size_and_memory():
    assert item_index.choose_kind(1_682, 128) == "exact"
    assert item_index.choose_kind(1_000_000, 128) == "hnsw"
    assert item_index.choose_kind(100_000_000, 128, memory_bytes=8 << 30) == "ivf_pq"


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="index kind must be one of auto, exact, hnsw"):
        item_index.IndexSpec(kind="annoy")


def test_load_refuses_an_ann_index_that_does_not_match_its_vectors(tmp_path, catalogue):
    ids, vectors = catalogue
    item_index.write(tmp_path, ids, vectors, item_index.IndexSpec(kind="hnsw"), log=lambda _: None)
    np.save(tmp_path / item_index.INDEX_VECTORS, vectors[:-1])
    (tmp_path / item_index.INDEX_IDS).write_text(json.dumps(ids[:-1]))
    with pytest.raises(ValueError, match="holds 3000 vectors of 16-d"):
        item_index.ItemIndex.load(tmp_path)
    (tmp_path / item_index.INDEX_ANN).write_bytes(b"not faiss")
    with pytest.raises(ValueError, match="index.faiss is not a readable faiss index"):
        item_index.ItemIndex.load(tmp_path)
    (tmp_path / item_index.INDEX_ANN).unlink()
    with pytest.raises(ValueError, match="index.faiss is missing"):
        item_index.ItemIndex.load(tmp_path)


def test_unknown_item_ids_are_a_bad_request(catalogue):
    index = item_index.ItemIndex(*catalogue)
    with pytest.raises(BadRequest, match="unknown item id 'nope'"):
        index.vectors_of(["item1", "nope"])


@pytest.mark.parametrize(
    "vectors, ids, message",
    [
        (np.full((2, 3), np.nan, np.float32), ["a", "b"], "NaN or infinite"),
        (np.zeros((2, 3), np.float32), ["a", "b"], "all-zero vectors"),
        (np.eye(2, dtype=np.float32), ["a", "a"], "duplicates"),
        (np.arange(3, dtype=np.float32), ["a"], "non-empty \\(n, d\\) float array"),
    ],
)
def test_index_load_names_the_problem(tmp_path, vectors, ids, message):
    np.save(tmp_path / item_index.INDEX_VECTORS, vectors)
    (tmp_path / item_index.INDEX_IDS).write_text(json.dumps(ids))
    with pytest.raises(ValueError, match=message):
        item_index.ItemIndex.load(tmp_path)


def test_index_search_excludes_the_query_item():
    vectors = np.eye(4, dtype=np.float32) + 0.1
    index = item_index.ItemIndex(
        ["a", "b", "c", "d"], vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    )
    ids, scores = index.search(index.vectors_of(["a", "b"]), 2, exclude=["a", None])
    assert ids[0][0] != "a" and ids[1][0] == "b"
    assert scores.shape == (2, 2) and scores[0, 0] >= scores[0, 1]
