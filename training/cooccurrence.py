"""Co-occurrence mining as NoteLLM defines it (NoteLLM, arXiv 2403.01744).

For each user i, interactions are ordered by time; "viewed A then clicked B" holds when A comes
at most `window` positions before a click on B. Each user contributes 1/N_i to s(A -> B) at most
once, N_i being the number of items user i clicked, which damps very active users:

    s(A -> B) = sum over users i who viewed A then clicked B of 1 / N_i

Pairs with s < lower or s > upper are dropped; the top_t pairs by score are kept per source A.
Without a `label` column every interaction counts as a click.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class CooccurrenceConfig:
    window: int = 5  # B must be clicked at most this many interactions after A
    lower: float = 0.01  # l: drop pairs scoring below this
    upper: float = 30.0  # u: drop pairs scoring above this (very popular pairs)
    top_t: int = 10  # keep the t best pairs per source item


def sort_by_user_time(interactions: pd.DataFrame) -> pd.DataFrame:
    """Order by user, then time; ties keep the log's order (a stable sort), so results are deterministic."""
    return interactions.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)


def mine_pairs(interactions: pd.DataFrame, config: CooccurrenceConfig) -> pd.DataFrame:
    """Scored (src, dst, score) pairs, sorted by src then descending score, then dst."""
    log = sort_by_user_time(interactions)
    users = log["user_id"].to_numpy()
    items = log["item_id"].to_numpy()
    clicked = log["label"].to_numpy() > 0 if "label" in log.columns else np.ones(len(log), dtype=bool)
    n_clicks = log.loc[clicked].groupby("user_id").size()
    weight = 1.0 / log["user_id"].map(n_clicks).to_numpy(dtype="float64")  # 1/N_i per row (NaN: no clicks)

    parts = []
    for offset in range(1, min(config.window, len(log) - 1) + 1):
        a, b = slice(0, len(log) - offset), slice(offset, len(log))
        ok = (users[a] == users[b]) & clicked[b] & (items[a] != items[b])
        parts.append(
            pd.DataFrame({"user": users[b][ok], "src": items[a][ok], "dst": items[b][ok], "w": weight[b][ok]})
        )
    cols = {
        "user": pd.Series(dtype=str),
        "src": pd.Series(dtype=str),
        "dst": pd.Series(dtype=str),
        "w": pd.Series(dtype=float),
    }
    hits = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(cols)
    hits = hits.drop_duplicates(["user", "src", "dst"])  # a user counts once per (A, B)
    scores = hits.groupby(["src", "dst"], as_index=False)["w"].sum().rename(columns={"w": "score"})
    scores = scores[(scores["score"] >= config.lower) & (scores["score"] <= config.upper)]
    scores = scores.sort_values(["src", "score", "dst"], ascending=[True, False, True], kind="stable")
    return scores.groupby("src", sort=False).head(config.top_t).reset_index(drop=True)
