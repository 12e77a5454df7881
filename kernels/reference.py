"""Plain-PyTorch references for every kernel: the truth that tests and benchmarks import."""

from __future__ import annotations

import torch


def cosine_topk_reference(
    queries: torch.Tensor, items: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine scores and item indices per query.

    queries (q, d) and items (n, d) are L2-normalised already, so cosine = dot product (computed in
    fp32). `exclude` (q,) holds one item index per query to leave out (-1: none). k is clipped to
    the number of items left. Ties break toward the lower item index, deterministically.
    Returns scores (q, k') fp32 and indices (q, k') int64, best first.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    scores = queries.float() @ items.float().T  # (q, n)
    n = items.shape[0]
    if exclude is not None:
        rows = torch.arange(queries.shape[0], device=scores.device)
        valid = exclude >= 0
        scores[rows[valid], exclude[valid]] = float("-inf")
        n -= 1 if bool(valid.any()) else 0
    k = min(k, n)
    # A stable descending sort keeps equal scores in index order: the tie rule, made explicit.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order
