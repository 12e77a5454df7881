"""rank's item-vector cache: LRU bounds and counts, and cached scores equal uncached ones."""

import numpy as np
import pytest
import torch

from llmrec.server import runtime
from llmrec.server.contract import item_text
from llmrec.server.runtime import VectorCache


def test_cache_is_least_recently_used_and_counts():
    cache = VectorCache(2)
    cache.store(["a", "b"], torch.eye(2))
    found, missing = cache.lookup(["a", "c"])  # "a" becomes the most recent
    assert list(found) == ["a"] and missing == ["c"]
    cache.store(["c"], torch.ones(1, 2))  # evicts "b", the least recently used
    assert len(cache) == 2 and cache.lookup(["b"])[1] == ["b"]
    torch.testing.assert_close(cache.lookup(["a"])[0]["a"], torch.tensor([1.0, 0.0]))
    assert (cache.hits, cache.misses) == (2, 2)


def test_cache_of_zero_stores_nothing_and_more_texts_than_room_keep_the_last():
    off = VectorCache(0)
    off.store(["a"], torch.ones(1, 2))
    assert len(off) == 0
    small = VectorCache(2)
    small.store(["a", "b", "c"], torch.arange(6.0).view(3, 2))
    assert sorted(small.entries) == ["b", "c"]
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        VectorCache(-1)


def test_cached_scores_equal_uncached_scores(tiny_repo):
    texts = [item_text(r) for r in tiny_repo["items"].to_dict("records")]
    users = [(texts[:4], texts[4:20]), (texts[2:6], texts[10:30])]
    folder = tiny_repo["repo"] / "rank_core" / "1"
    uncached = runtime.RankScorer(folder, cache_items=0).score(users)
    cached = runtime.RankScorer(folder, cache_items=1000, warm=False)
    cold = cached.score(users)
    warm = cached.score(users[::-1])[::-1]  # every text now a hit
    assert cached.cache.hits == len({t for h, c in users for t in (*h, *c)})
    for a, b, c in zip(uncached, cold, warm, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(c, a, rtol=1e-5, atol=1e-5)


def test_the_exported_catalogue_warms_the_cache_at_load(tiny_repo):
    texts = [item_text(r) for r in tiny_repo["items"].to_dict("records")]
    scorer = runtime.RankScorer(tiny_repo["repo"] / "rank_core" / "1", cache_items=30)
    assert len(scorer.cache) == 30 and (scorer.cache.hits, scorer.cache.misses) == (0, 0)
    scorer.score([(texts[:2], texts[2:5])])
    assert (scorer.cache.hits, scorer.cache.misses) == (5, 0)


def test_a_malformed_catalogue_names_the_file(tmp_path):
    bad = tmp_path / runtime.RANK_CATALOGUE
    bad.write_text('["Toy Story", 3]')
    with pytest.raises(ValueError, match="must be a JSON list of non-empty item texts"):
        runtime.catalogue_texts(bad)
    bad.write_text("[")
    with pytest.raises(ValueError, match="is not valid JSON"):
        runtime.catalogue_texts(bad)
