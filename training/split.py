"""The time-based split: test pairs come only from interactions after a cut-off.

Mining for training sees only interactions at or before the cut-off; test pairs are mined from
the interactions after it. Nothing after the cut-off reaches training pairs, teacher vectors or
co-occurrence scores (tests/training/test_split.py proves it by perturbing the held-out period).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from llmrec.training.cooccurrence import CooccurrenceConfig, mine_pairs
from llmrec.training.schema import RecData


@dataclass
class SplitConfig:
    test_fraction: float = 0.1  # share of interactions (by time) held out for testing
    train_pairs: CooccurrenceConfig = field(default_factory=CooccurrenceConfig)
    # Test pairs: same rule, but keep every scored pair (l = 0): held-out weeks are short.
    test_pairs: CooccurrenceConfig = field(default_factory=lambda: CooccurrenceConfig(lower=0.0))


@dataclass(frozen=True)
class Split:
    cutoff: float  # train: timestamp <= cutoff; test: timestamp > cutoff
    train_interactions: pd.DataFrame
    test_interactions: pd.DataFrame
    train_pairs: pd.DataFrame
    test_pairs: pd.DataFrame

    def held_out_items(self, items: pd.DataFrame) -> pd.DataFrame:
        """Items that appear in no training pair: their category was never a training target."""
        seen = set(self.train_pairs["src"]) | set(self.train_pairs["dst"])
        return items[~items["item_id"].isin(seen)].reset_index(drop=True)


def time_split(data: RecData, config: SplitConfig) -> Split:
    if not 0.0 < config.test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {config.test_fraction}")
    inter = data.interactions
    cutoff = float(inter["timestamp"].quantile(1.0 - config.test_fraction, interpolation="lower"))
    train = inter[inter["timestamp"] <= cutoff].reset_index(drop=True)
    test = inter[inter["timestamp"] > cutoff].reset_index(drop=True)
    if train.empty or test.empty:
        raise ValueError(
            f"{data.name}: the split at t={cutoff} leaves an empty side (train {len(train)}, test {len(test)})"
        )
    return Split(
        cutoff, train, test, mine_pairs(train, config.train_pairs), mine_pairs(test, config.test_pairs)
    )


def split_stats(data: RecData, split: Split) -> dict[str, float | int]:
    return {
        "users": data.n_users,
        "items": len(data.items),
        "interactions": len(data.interactions),
        "train_interactions": len(split.train_interactions),
        "test_interactions": len(split.test_interactions),
        "cutoff": split.cutoff,
        "cutoff_utc": pd.Timestamp(split.cutoff, unit="s").isoformat(),
        "train_pairs": len(split.train_pairs),
        "test_pairs": len(split.test_pairs),
        "held_out_items": len(split.held_out_items(data.items)),
    }
