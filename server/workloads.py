"""Realistic requests from the held-out data, shared by the demo, the benchmarks and the load tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from llmrec.server.contract import item_text


def user_requests(
    items: pd.DataFrame,
    train: pd.DataFrame,
    test: pd.DataFrame,
    n_users: int,
    history: int,
    candidates: int,
    seed: int = 0,
) -> list[dict]:
    """Held-out users: their last `history` training items, and their first test item among random others."""
    rng = np.random.default_rng(seed)
    text = dict(zip(items["item_id"], [item_text(r) for r in items.to_dict("records")], strict=True))
    title = dict(zip(items["item_id"], items["title"], strict=True))
    all_ids = items["item_id"].to_numpy()
    out = []
    for user, rows in test.sort_values("timestamp").groupby("user_id", sort=False):
        past = train[train["user_id"] == user].sort_values("timestamp")["item_id"].tolist()[-history:]
        if len(past) < history:
            continue
        target = rows["item_id"].iloc[0]
        others = [
            i
            for i in rng.choice(all_ids, size=min(candidates * 2, len(all_ids)), replace=False)
            if i != target and i not in past
        ]
        cands = [target, *others[: candidates - 1]]
        out.append(
            {
                "user": user,
                "history": [text[i] for i in past],
                "history_ids": past,
                "history_titles": [title[i] for i in past],
                "candidates": cands,
                "candidate_texts": [text[i] for i in cands],
                "target": target,
            }
        )
        if len(out) == n_users:
            break
    return out
