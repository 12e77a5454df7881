"""Plain-PyTorch references for every kernel: the truth that tests and benchmarks import."""

from __future__ import annotations

import torch


def cosine_topk_reference(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    deleted: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine scores and item indices per query (the contract of `cosine_topk`).

    queries (q, d) and items (n, d) are L2-normalised already, so cosine = dot product (fp32).
    `exclude` (q,) drops one item per query (-1: none); `deleted` (n,) bool drops items for all.
    Returns (q, min(k, n)) scores fp32 and indices int64, best first; ties break toward the lower
    index; slots without an eligible item hold score -inf and index -1.
    """
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    scores = queries.float() @ items.float().T  # (q, n)
    if deleted is not None:
        scores[:, deleted.bool()] = float("-inf")
    if exclude is not None:
        rows = torch.arange(queries.shape[0], device=scores.device)
        valid = exclude >= 0
        scores[rows[valid], exclude[valid]] = float("-inf")
    k = min(k, items.shape[0])
    # A stable descending sort keeps equal scores in index order: the tie rule, made explicit.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    top = scores.gather(1, order)
    return top, torch.where(torch.isneginf(top), torch.full_like(order, -1), order)


_MASKED = -1e30  # finite: a fully masked row then softmaxes to finite weights that are zeroed, never NaN


def _masked_softmax_pool(scores: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """sum_i softmax_i(scores) values_i over unmasked positions; a fully masked row pools to zeros."""
    mask = mask.bool()
    a = torch.softmax(scores.masked_fill(~mask, _MASKED), dim=1) * mask.any(1, keepdim=True)  # (B, L)
    return torch.einsum("bl,bld->bd", a, values)


def dot_attention_pool_reference(
    tokens: torch.Tensor, mask: torch.Tensor, w: torch.Tensor, global_vec: torch.Tensor | None = None
) -> torch.Tensor:
    """EaaF's pooling: v_i = [e_i ; u], a_i = softmax_i(w . v_i / sqrt(dim v)), h = sum_i a_i v_i.

    tokens (B, L, D), mask (B, L), w (D + U,), global_vec u (B, U) or None. Returns (B, D + U) in the
    tokens' dtype, computed in fp32. A fully masked row gives zeros.
    """
    e = tokens.float()
    if global_vec is not None:
        e = torch.cat([e, global_vec.float().unsqueeze(1).expand(-1, e.shape[1], -1)], dim=-1)  # (B, L, D+U)
    scores = e @ w.float() / e.shape[-1] ** 0.5  # (B, L)
    return _masked_softmax_pool(scores, mask, e).to(tokens.dtype)


def additive_attention_pool_reference(
    tokens: torch.Tensor, mask: torch.Tensor, proj: torch.Tensor, bias: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """The released GPT4SM code's pooling: a_t = softmax_t(q . tanh(V e_t + b)), h = sum_t a_t e_t.

    tokens (B, L, D), mask (B, L), proj V (A, D), bias b (A,), query q (A,). Returns (B, D).
    """
    e = tokens.float()
    scores = torch.tanh(e @ proj.float().T + bias.float()) @ query.float()  # (B, L)
    return _masked_softmax_pool(scores, mask, e).to(tokens.dtype)
