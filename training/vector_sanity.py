"""Did the item vectors learn anything? Two figures a person can judge at a glance, and a few neighbours.

- mean pairwise cosine over the catalogue: near 1 means the vectors collapsed toward one direction and
  cosine ranks are decided by small residues;
- top-k category agreement: the share of each item's k nearest neighbours that share its category (on
  MovieLens the first genre), next to what k random neighbours give (the category's share of the catalogue);
- near-twin share: the share of items whose nearest other item sits above a cosine of 0.95. A low mean
  cosine can hide tight clumps (items spread over the sphere in a few dense groups, neighbours within a
  group tied); this says how much of the catalogue lives in them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from llmrec.kernels import cosine_topk


def mean_pairwise_cosine(vectors: torch.Tensor) -> float:
    """Mean cosine over all pairs of distinct rows, in O(n d): (|sum v|^2 - sum |v|^2) / (n (n - 1))."""
    v = torch.nn.functional.normalize(vectors.double(), dim=1)
    n = len(v)
    if n < 2:
        return float("nan")
    total = v.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


def category_agreement(
    vectors: torch.Tensor, categories: list[str], k: int = 10, max_queries: int = 5000, seed: int = 0
) -> tuple[float, float]:
    """(share of the k nearest neighbours with the query's category, the same share for random neighbours)."""
    cats = np.asarray(categories)
    n = len(cats)
    queries = np.arange(n)
    if n > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(n, max_queries, replace=False))
    q = torch.from_numpy(queries)
    vectors = torch.nn.functional.normalize(vectors.float(), dim=1)  # cosine_topk takes unit rows
    _, top = cosine_topk(vectors[q], vectors, k, exclude=q)
    agree = float((cats[top.numpy()] == cats[queries, None]).mean())
    _, inverse, counts = np.unique(cats, return_inverse=True, return_counts=True)
    random = float(((counts[inverse[queries]] - 1) / (n - 1)).mean())
    return agree, random


def near_twin_share(
    vectors: torch.Tensor, above: float = 0.95, max_queries: int = 5000, seed: int = 0
) -> float:
    """Share of items (a seeded sample of at most `max_queries`) whose nearest other item has cosine > `above`."""
    n = len(vectors)
    if n < 2:
        return float("nan")
    queries = np.arange(n)
    if n > max_queries:
        queries = np.sort(np.random.default_rng(seed).choice(n, max_queries, replace=False))
    q = torch.from_numpy(queries)
    vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
    nearest, _ = cosine_topk(vectors[q], vectors, 1, exclude=q)
    return float((nearest[:, 0] > above).float().mean())


def report(vectors: torch.Tensor, items: pd.DataFrame, k: int = 10) -> dict[str, float]:
    agree, random = category_agreement(vectors, items["category"].tolist(), k)
    return {
        "mean_pairwise_cosine": mean_pairwise_cosine(vectors),
        f"top{k}_category_agreement": agree,
        f"random{k}_category_agreement": random,
        "near_twin_share_0.95": near_twin_share(vectors),
    }


def neighbours(vectors: torch.Tensor, items: pd.DataFrame, queries: list[str], k: int = 5) -> list[dict]:
    """For each query item id: its title and the titles and cosines of its k nearest other items."""
    row = {item_id: i for i, item_id in enumerate(items["item_id"])}
    titles = items["title"].tolist()
    rows = [row[q] for q in queries if q in row]
    q = torch.tensor(rows)
    vectors = torch.nn.functional.normalize(vectors.float(), dim=1)  # cosine_topk takes unit rows
    scores, top = cosine_topk(vectors[q], vectors, k, exclude=q)
    return [
        {
            "item": titles[r],
            "neighbours": "; ".join(
                f"{titles[int(j)]} ({float(s):.2f})" for j, s in zip(top[i], scores[i], strict=True)
            ),
        }
        for i, r in enumerate(rows)
    ]
