import pandas as pd
import pytest
import torch

from llmrec.training.i2i_eval import category_accuracy, recall_at_k


def test_recall_by_hand():
    # Four items on a circle: item 0's neighbours by cosine are 1 (0.8), then 3 (0.6), then 2 (-1).
    v = torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0], [0.6, -0.8]])
    ids = ["a", "b", "c", "d"]
    pairs = pd.DataFrame({"src": ["a", "a", "b"], "dst": ["b", "c", "a"], "score": 1.0})
    # a->b at rank 0, a->c at rank 2, b->a at rank 0 (b's own vector is excluded).
    assert recall_at_k(v, ids, pairs, ks=(1, 2, 3)) == pytest.approx(
        {"R@1": 200 / 3, "R@2": 200 / 3, "R@3": 100.0}
    )


def test_k_not_below_catalogue_is_dropped_and_unknown_items_fail():
    v = torch.eye(3)
    pairs = pd.DataFrame({"src": ["0"], "dst": ["1"], "score": 1.0})
    assert set(recall_at_k(v, ["0", "1", "2"], pairs, ks=(1, 2, 10))) == {"R@1", "R@2"}
    with pytest.raises(ValueError, match="without a vector"):
        recall_at_k(v, ["0", "1", "2"], pd.DataFrame({"src": ["0"], "dst": ["9"], "score": 1.0}))


def test_recall_chunks_agree():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(50, 8), dim=1)
    ids = [str(i) for i in range(50)]
    pairs = pd.DataFrame(
        {"src": [str(i % 50) for i in range(120)], "dst": [str((i * 7 + 3) % 50) for i in range(120)]}
    )
    pairs = pairs[pairs.src != pairs.dst]
    assert recall_at_k(v, ids, pairs, ks=(5, 20), chunk=7) == recall_at_k(
        v, ids, pairs, ks=(5, 20), chunk=1000
    )


def test_category_accuracy():
    assert category_accuracy(["Drama", " comedy", "x"], ["drama", "Comedy", "Action"]) == pytest.approx(
        200 / 3
    )


def test_popularity_recall_by_hand():
    from llmrec.training.i2i_eval import popularity_recall

    train = pd.DataFrame({"user_id": "u", "item_id": ["c", "c", "c", "b", "b", "a"], "timestamp": 0.0})
    # List: c, b, a, d. Query a: [c, b, d] -> b at rank 1. Query c: [b, a, d] -> d at rank 2.
    pairs = pd.DataFrame({"src": ["a", "c"], "dst": ["b", "d"], "score": 1.0})
    got = popularity_recall(train, ["a", "b", "c", "d"], pairs, ks=(1, 2, 3))
    assert got == pytest.approx({"R@1": 0.0, "R@2": 50.0, "R@3": 100.0})


def test_exposure_buckets_on_a_hand_made_split():
    from llmrec.training.i2i_eval import exposure_buckets, recall_from_ranks

    # Training-period interactions: a x4, b x3, c x1, d x0; e never seen. Training pairs cover a, b, c.
    train = pd.DataFrame({"user_id": "u", "item_id": list("aaaabbbc"), "timestamp": 0.0})
    train_pairs = pd.DataFrame({"src": ["a", "b"], "dst": ["b", "c"], "score": 1.0})
    test = pd.DataFrame({"src": ["c", "c", "a", "b"], "dst": ["a", "b", "d", "e"], "score": 1.0})
    # Target exposures 4, 3, 0, 0: median 1.5 -> low = d, e; high = a, b; cold = d, e (in no training pair).
    got = exposure_buckets(train, train_pairs, test)
    assert got["all"].tolist() == [True] * 4
    assert got["low"].tolist() == [False, False, True, True]
    assert got["high"].tolist() == [True, True, False, False]
    assert got["cold"].tolist() == [False, False, True, True]
    ranks = torch.tensor([0, 5, 1, 9])
    assert recall_from_ranks(ranks, (2,), got["high"]) == {"R@2": 50.0}
    assert recall_from_ranks(ranks, (2,), got["low"]) == {"R@2": 50.0}
    assert recall_from_ranks(ranks, (10,)) == {"R@10": 100.0}
    empty = recall_from_ranks(ranks, (2,), [False] * 4)
    assert empty["R@2"] != empty["R@2"]  # NaN: no pairs in the bucket
