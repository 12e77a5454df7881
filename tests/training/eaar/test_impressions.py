import numpy as np
import pandas as pd

from llmrec.training.eaar.impressions import build_impressions

ROW = {str(i): i for i in range(30)}


def log():
    # u1: 0 -> 1 -> 2 -> 3 (timestamps shuffled); u2: 5 -> 6.
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u1", "u2", "u2"],
            "item_id": ["2", "0", "3", "1", "6", "5"],
            "timestamp": [30.0, 10.0, 40.0, 20.0, 2.0, 1.0],
        }
    )


def test_history_is_the_last_items_before_the_target_in_time_order():
    imp = build_impressions(log(), ROW, history_len=2, negatives=3, seed=0)
    assert imp.candidates[:, 0].tolist() == [1, 2, 3, 6]  # the first interaction of a user has no history
    assert imp.history.tolist() == [[0, -1], [0, 1], [1, 2], [5, -1]]


def test_negatives_never_include_an_item_the_user_touched():
    rng = np.random.default_rng(0)
    big = pd.DataFrame(
        {
            "user_id": rng.integers(0, 10, 80).astype(str),
            "item_id": rng.integers(0, 30, 80).astype(str),
            "timestamp": rng.random(80),
        }
    )
    imp = build_impressions(big, ROW, history_len=3, negatives=4, seed=1)
    ordered = big.sort_values(["user_id", "timestamp"], kind="stable")
    seen = ordered.groupby("user_id")["item_id"].agg(lambda s: {int(i) for i in s})
    users = [u for u, g in ordered.groupby("user_id", sort=False) for _ in range(len(g) - 1)]
    for user, cands in zip(users, imp.candidates, strict=True):
        assert not set(cands[1:].tolist()) & seen[user]
        assert len(set(cands[1:].tolist())) == 4


def test_targets_filter_and_exclude_log():
    full = log()
    later = pd.Series(full["timestamp"] >= 30)
    imp = build_impressions(full, ROW, history_len=3, negatives=2, seed=0, targets=later)
    assert imp.candidates[:, 0].tolist() == [2, 3]
    assert imp.history.tolist() == [[0, 1, -1], [0, 1, 2]]
