import pandas as pd

from llmrec.training.schema import RecData
from llmrec.training.split import SplitConfig, time_split
from tests.conftest import make_items


def make_data(seed: int = 0, n_users: int = 30) -> RecData:
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = [
        (f"u{u}", str(rng.integers(0, 12)), float(rng.integers(0, 1000)))
        for u in range(n_users)
        for _ in range(15)
    ]
    return RecData("toy", make_items(), pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"]))


def test_test_pairs_come_only_from_after_the_cutoff():
    data = make_data()
    split = time_split(data, SplitConfig(test_fraction=0.3))
    assert (
        split.train_interactions["timestamp"].max()
        <= split.cutoff
        < split.test_interactions["timestamp"].min()
    )
    assert len(split.train_interactions) + len(split.test_interactions) == len(data.interactions)
    assert len(split.train_pairs) and len(split.test_pairs)


def test_no_leakage_training_pairs_ignore_the_held_out_period():
    """Rewrite everything after the cut-off: the training pairs must not change at all."""
    data = make_data()
    config = SplitConfig(test_fraction=0.3)
    split = time_split(data, config)
    later = data.interactions["timestamp"] > split.cutoff
    scrambled = data.interactions.copy()
    scrambled.loc[later, "item_id"] = (
        scrambled.loc[later, "item_id"].sample(frac=1, random_state=1).to_numpy()
    )
    other = time_split(RecData("toy", data.items, scrambled), config)
    assert other.cutoff == split.cutoff
    pd.testing.assert_frame_equal(other.train_pairs, split.train_pairs)
    assert not other.test_pairs.equals(split.test_pairs)


def test_held_out_items_are_those_in_no_training_pair():
    data = make_data()
    split = time_split(data, SplitConfig(test_fraction=0.3))
    held = set(split.held_out_items(data.items)["item_id"])
    assert held.isdisjoint(set(split.train_pairs["src"]) | set(split.train_pairs["dst"]))
