"""Ranking samples in the recommendation setting of GPT4SM: history -> (target + K negatives).

A sample is one interaction (user, target) with the user's last H items before it as history and K
negatives drawn uniformly from the catalogue minus every item the user interacted with. Training samples
come from the training period and exclude the training-period items of the user; test impressions come
from the held-out period (their history may reach back into the training period, which is what the user
saw) and exclude every item of the user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from llmrec.training.cooccurrence import sort_by_user_time


@dataclass(frozen=True)
class Impressions:
    history: np.ndarray  # (S, H) item rows, -1 = padding (left-aligned, most recent last)
    candidates: np.ndarray  # (S, 1 + K) item rows; column 0 is the clicked target

    def __len__(self) -> int:
        return len(self.history)


def build_impressions(
    log: pd.DataFrame,
    item_row: dict[str, int],
    history_len: int,
    negatives: int,
    seed: int,
    targets: pd.Series | None = None,
    exclude_log: pd.DataFrame | None = None,
) -> Impressions:
    """Samples for every interaction of `log` flagged in `targets` (all, by default) that has >= 1 history item.

    `exclude_log` (default: `log`) decides which items count as "interacted with" for negative sampling.
    """
    rng = np.random.default_rng(seed)
    n_items = len(item_row)
    ordered = sort_by_user_time(log.assign(_target=True if targets is None else targets.to_numpy()))
    excluded = (
        (exclude_log if exclude_log is not None else log)
        .groupby("user_id")["item_id"]
        .agg(lambda s: {item_row[i] for i in s})
    )
    histories, candidates = [], []
    for user, group in ordered.groupby("user_id", sort=False):
        rows = [item_row[i] for i in group["item_id"]]
        seen = excluded.get(user, set())
        if len(seen) + negatives >= n_items:
            raise ValueError(
                f"user {user!r} interacted with {len(seen)} of {n_items} items: too few left for {negatives} negatives"
            )
        for t, is_target in enumerate(group["_target"].to_numpy()):
            if not is_target or t == 0:
                continue
            hist = rows[max(0, t - history_len) : t]
            negs: list[int] = []
            while len(negs) < negatives:
                draw = int(rng.integers(n_items))
                if draw not in seen and draw not in negs:
                    negs.append(draw)
            histories.append(hist + [-1] * (history_len - len(hist)))
            candidates.append([rows[t], *negs])
    return Impressions(
        np.asarray(histories, dtype=np.int64).reshape(-1, history_len),
        np.asarray(candidates, dtype=np.int64).reshape(-1, 1 + negatives),
    )
