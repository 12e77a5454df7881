"""Item-to-item recall as NoteLLM reports it.

For each held-out pair (A, B): rank every catalogue item by cosine to A (A itself excluded) and
count a hit at k when B is among the top k. Recall@k = hits / pairs.

The paper also splits the test by exposure (low-exposure notes gain most from content embeddings);
`exposure_buckets` groups the test pairs by their target B: low and high exposure (training-period
interactions below / at or above the median over the test targets) and cold (B in no training pair).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from llmrec.kernels import cosine_topk

DEFAULT_KS = (10, 50, 100, 1000)


def recall_at_k(
    vectors: torch.Tensor, item_ids: list[str], pairs: pd.DataFrame, ks=DEFAULT_KS, chunk: int = 1024
) -> dict[str, float]:
    """Recall@k (in %) for every k smaller than the catalogue; `vectors` rows follow `item_ids`."""
    ks = [k for k in ks if k < len(item_ids)]
    return recall_from_ranks(pair_ranks(vectors, item_ids, pairs, max(ks, default=1), chunk), ks)


def recall_from_ranks(rank: torch.Tensor, ks, where: np.ndarray | None = None) -> dict[str, float]:
    """Recall@k (in %) from each pair's 0-based rank of B, over the pairs `where` selects (all by default)."""
    if where is not None:
        rank = rank[torch.from_numpy(np.asarray(where, dtype=bool))]
    if len(rank) == 0:
        return {f"R@{k}": float("nan") for k in ks}
    return {f"R@{k}": 100.0 * float((rank < k).float().mean()) for k in ks}


def pair_ranks(
    vectors: torch.Tensor, item_ids: list[str], pairs: pd.DataFrame, kmax: int, chunk: int = 1024
) -> torch.Tensor:
    """Each pair's 0-based rank of B among A's cosine neighbours (A excluded); kmax when not in the top kmax."""
    if len(vectors) != len(item_ids):
        raise ValueError(f"{len(vectors)} vectors for {len(item_ids)} items")
    row = {item_id: i for i, item_id in enumerate(item_ids)}
    unknown = sorted(set(pairs["src"]).union(pairs["dst"]) - row.keys())
    if unknown:
        raise ValueError(f"test pairs name {len(unknown)} item(s) without a vector, e.g. {unknown[:3]}")
    src = torch.tensor(pairs["src"].map(row).to_numpy())
    dst = torch.tensor(pairs["dst"].map(row).to_numpy())
    queries = torch.unique(src)
    rank = torch.full((len(src),), kmax, dtype=torch.long)  # kmax = "not in the top kmax"
    where = {int(q): i for i, q in enumerate(queries)}
    q_of_pair = torch.tensor([where[int(s)] for s in src])
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        _, top = cosine_topk(vectors[q], vectors, kmax, exclude=q)  # (c, kmax)
        sel = (q_of_pair >= start) & (q_of_pair < start + len(q))
        hits = top[q_of_pair[sel] - start] == dst[sel].unsqueeze(1)  # (p, kmax)
        found = hits.any(1)
        r = torch.full((int(sel.sum()),), kmax, dtype=torch.long)
        r[found] = hits[found].float().argmax(1)
        rank[sel] = r
    return rank


def popularity_recall(
    train_interactions: pd.DataFrame, item_ids: list[str], pairs: pd.DataFrame, ks=DEFAULT_KS
) -> dict[str, float]:
    """Recall@k of one fixed list for every query: items by training-period interaction count (A excluded).

    Not a text model: the context that says how much of the co-occurrence signal is plain popularity.
    """
    ks = [k for k in ks if k < len(item_ids)]
    return recall_from_ranks(popularity_ranks(train_interactions, item_ids, pairs), ks)


def popularity_ranks(
    train_interactions: pd.DataFrame, item_ids: list[str], pairs: pd.DataFrame
) -> torch.Tensor:
    """Each pair's 0-based rank of B in the training-period popularity list with A left out."""
    counts = train_interactions["item_id"].value_counts().reindex(item_ids).fillna(0).to_numpy()
    order = torch.tensor(counts).argsort(descending=True, stable=True)  # ties: lower catalogue index first
    row = {item_id: i for i, item_id in enumerate(item_ids)}
    rank_of = torch.empty(len(item_ids), dtype=torch.long)
    rank_of[order] = torch.arange(len(item_ids))
    src = torch.tensor(pairs["src"].map(row).to_numpy())
    dst = torch.tensor(pairs["dst"].map(row).to_numpy())
    return rank_of[dst] - (rank_of[src] < rank_of[dst]).long()  # A itself is left out of the list


def exposure_buckets(
    train_interactions: pd.DataFrame, train_pairs: pd.DataFrame, pairs: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Masks over `pairs` by their target B: all, low / high exposure (split at the median), cold.

    Exposure is B's number of training-period interactions; the median is taken over the test pairs' targets,
    so the low and high buckets hold about half the pairs each (ties go to high). Cold: B is in no training
    pair, so no model trained on the pairs has seen it as a positive or a negative.
    """
    counts = train_interactions["item_id"].value_counts()
    exposure = pairs["dst"].map(counts).fillna(0).to_numpy()
    median = float(np.median(exposure)) if len(exposure) else 0.0
    seen = set(train_pairs["src"]) | set(train_pairs["dst"])
    return {
        "all": np.ones(len(pairs), dtype=bool),
        "low": exposure < median,
        "high": exposure >= median,
        "cold": ~pairs["dst"].isin(seen).to_numpy(),
    }


def category_accuracy(predicted: list[str], truth: list[str]) -> float:
    """Exact match (case-insensitive), in %."""
    if not truth:
        return float("nan")
    return (
        100.0
        * sum(p.strip().lower() == t.strip().lower() for p, t in zip(predicted, truth, strict=True))
        / len(truth)
    )
