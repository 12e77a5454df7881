import pandas as pd
import pytest

from llmrec.training.cooccurrence import CooccurrenceConfig, mine_pairs


def log(rows):
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]).astype({"timestamp": float})


def scores(pairs):
    return {(s, d): round(v, 6) for s, d, v in zip(pairs["src"], pairs["dst"], pairs["score"], strict=True)}


# User u1 clicks A, B, C (N=3); user u2 clicks A, B (N=2); timestamps out of order on purpose.
LOG = log([("u1", "C", 30), ("u1", "A", 10), ("u1", "B", 20), ("u2", "B", 7), ("u2", "A", 5)])
ALL = CooccurrenceConfig(window=5, lower=0.0, upper=30.0, top_t=10)


def test_scores_by_hand():
    # A->B: u1 1/3 + u2 1/2; A->C: u1 1/3; B->C: u1 1/3. Nothing goes backwards in time.
    assert scores(mine_pairs(LOG, ALL)) == {
        ("A", "B"): round(1 / 3 + 1 / 2, 6),
        ("A", "C"): round(1 / 3, 6),
        ("B", "C"): round(1 / 3, 6),
    }


def test_window_limits_the_distance():
    assert set(scores(mine_pairs(LOG, CooccurrenceConfig(window=1, lower=0.0)))) == {("A", "B"), ("B", "C")}


def test_thresholds_and_top_t():
    assert set(scores(mine_pairs(LOG, CooccurrenceConfig(window=5, lower=0.4)))) == {("A", "B")}
    assert set(scores(mine_pairs(LOG, CooccurrenceConfig(window=5, lower=0.0, upper=0.5)))) == {
        ("A", "C"),
        ("B", "C"),
    }
    assert set(scores(mine_pairs(LOG, CooccurrenceConfig(window=5, lower=0.0, top_t=1)))) == {
        ("A", "B"),
        ("B", "C"),
    }


def test_a_user_counts_once_per_pair_and_self_pairs_are_dropped():
    # u views A twice before clicking B: one contribution of 1/N = 1/4 (N = 4 clicks), and A->A never counts.
    got = scores(mine_pairs(log([("u", "A", 1), ("u", "A", 2), ("u", "X", 3), ("u", "B", 4)]), ALL))
    assert got[("A", "B")] == pytest.approx(0.25)
    assert ("A", "A") not in got


def test_labels_separate_views_from_clicks():
    rows = pd.DataFrame(
        {"user_id": ["u"] * 3, "item_id": ["A", "B", "C"], "timestamp": [1.0, 2.0, 3.0], "label": [0, 1, 0]}
    )
    # Only B was clicked (N = 1): "viewed A then clicked B" is the one pair.
    assert scores(mine_pairs(rows, ALL)) == {("A", "B"): 1.0}
