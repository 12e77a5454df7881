"""Item-to-item recall as NoteLLM reports it.

For each held-out pair (A, B): rank every catalogue item by cosine to A (A itself excluded) and
count a hit at k when B is among the top k. Recall@k = hits / pairs.
"""

from __future__ import annotations

import pandas as pd
import torch

from llmrec.kernels import cosine_topk

DEFAULT_KS = (10, 50, 100, 1000)


def recall_at_k(
    vectors: torch.Tensor, item_ids: list[str], pairs: pd.DataFrame, ks=DEFAULT_KS, chunk: int = 1024
) -> dict[str, float]:
    """Recall@k (in %) for every k smaller than the catalogue; `vectors` rows follow `item_ids`."""
    if len(vectors) != len(item_ids):
        raise ValueError(f"{len(vectors)} vectors for {len(item_ids)} items")
    row = {item_id: i for i, item_id in enumerate(item_ids)}
    unknown = sorted(set(pairs["src"]).union(pairs["dst"]) - row.keys())
    if unknown:
        raise ValueError(f"test pairs name {len(unknown)} item(s) without a vector, e.g. {unknown[:3]}")
    ks = [k for k in ks if k < len(item_ids)]
    kmax = max(ks)
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
    return {f"R@{k}": 100.0 * float((rank < k).float().mean()) for k in ks}


def popularity_recall(
    train_interactions: pd.DataFrame, item_ids: list[str], pairs: pd.DataFrame, ks=DEFAULT_KS
) -> dict[str, float]:
    """Recall@k of one fixed list for every query: items by training-period interaction count (A excluded).

    Not a text model: the context that says how much of the co-occurrence signal is plain popularity.
    """
    counts = train_interactions["item_id"].value_counts().reindex(item_ids).fillna(0).to_numpy()
    order = torch.tensor(counts).argsort(descending=True, stable=True)  # ties: lower catalogue index first
    row = {item_id: i for i, item_id in enumerate(item_ids)}
    rank_of = torch.empty(len(item_ids), dtype=torch.long)
    rank_of[order] = torch.arange(len(item_ids))
    src = torch.tensor(pairs["src"].map(row).to_numpy())
    dst = torch.tensor(pairs["dst"].map(row).to_numpy())
    rank = rank_of[dst] - (rank_of[src] < rank_of[dst]).long()  # A itself is left out of the list
    return {f"R@{k}": 100.0 * float((rank < k).float().mean()) for k in ks if k < len(item_ids)}


def category_accuracy(predicted: list[str], truth: list[str]) -> float:
    """Exact match (case-insensitive), in %."""
    if not truth:
        return float("nan")
    return (
        100.0
        * sum(p.strip().lower() == t.strip().lower() for p, t in zip(predicted, truth, strict=True))
        / len(truth)
    )
