"""Cosine top-k over a normalised item matrix: the dispatch point for i2i recall.

The fused Triton kernel (scoring and selection in one pass, no q x n score matrix in memory) is
issue #4; until it lands every device runs the reference, and callers need not change when it does.
"""

from __future__ import annotations

import torch
from llmrec.kernels.reference import cosine_topk_reference


def cosine_topk(
    queries: torch.Tensor, items: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """See `cosine_topk_reference` for the contract."""
    if queries.ndim != 2 or items.ndim != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(
            f"expected queries (q, d) and items (n, d), got {tuple(queries.shape)} and {tuple(items.shape)}"
        )
    return cosine_topk_reference(queries, items, k, exclude)
