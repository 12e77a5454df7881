"""Fused cosine top-k: scoring and selection in one pass over the item matrix.

Queries Q (q, d) and items X (n, d) are L2-normalised, so cosine = Q X^T. Writing the q x n score
matrix and reading it back costs more than the scan itself (2 N d bytes of items read once vs q N scores written and read back), so each program
scores one tile of items at a time and folds it into a running top-K kept in registers; only the
per-split partial top-K lists reach memory, and a small merge picks the final k.

Selection carries (score, index) as one int64 key: the score's fp32 bits mapped to an order-preserving
int32 in the high half, (2^32 - 1 - index) in the low half. One descending sort of keys then orders by
score and breaks ties toward the lower index, deterministically; the reference does the same.

Contract (shared with `reference.cosine_topk_reference`): returns (scores fp32, indices int64) of shape
(q, min(k, n)), best first; `exclude` (q,) drops one item per query (-1: none), `deleted` (n,) bool drops
items for every query; slots left without an eligible item hold score -inf and index -1.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from llmrec.kernels.dispatch import use_triton
from llmrec.kernels.reference import cosine_topk_reference

_LOW32 = 0xFFFFFFFF
# Past this k the (BLOCK_Q, 2 K_PAD) int64 merge no longer fits in an H100's shared memory; larger k
# goes to the reference (matmul + torch.topk), which is also faster there.
MAX_KERNEL_K = 512
# Measured on an H100 (docs/BENCHMARKS.md, 2026-11-24): cuBLAS matmul + torch.topk beats this kernel at
# every benchmarked shape (it only saves the q x n score matrix), so "auto" keeps the reference on CUDA;
# LLMREC_KERNELS=triton or force="triton" selects the kernel.
CUDA_DEFAULT = False


@triton.jit
def _score_keys(s, idx, excl, DELETED_ptr, n_items, HAS_DELETED: tl.constexpr):
    """Pack scores (BQ, BN) and item indices (BN,) into descending-sortable int64 keys."""
    dead = (idx[None, :] >= n_items) | (idx[None, :] == excl[:, None])
    if HAS_DELETED:
        gone = tl.load(DELETED_ptr + idx, mask=idx < n_items, other=1)
        dead = dead | (gone[None, :] != 0)
    s = tl.where(dead, float("-inf"), s)
    bits = s.to(tl.int32, bitcast=True)
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # fp32 order == signed int32 order
    low = 4294967295 - idx.to(tl.int64)  # ties: the lower index wins
    return (ordered.to(tl.int64) << 32) | low[None, :]


@triton.jit
def _cosine_topk_kernel(
    Q_ptr,
    X_ptr,
    EXCL_ptr,
    DELETED_ptr,
    OUT_ptr,
    n_queries,
    n_items,
    dim,
    items_per_split,
    q_stride,
    x_stride,
    out_stride_q,
    out_stride_s,
    K_PAD: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
    HAS_DELETED: tl.constexpr,
    UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    pid_q = tl.program_id(0)
    pid_s = tl.program_id(1)
    rows = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < n_queries
    excl = tl.load(EXCL_ptr + rows, mask=row_ok, other=-1)
    cols_d = tl.arange(0, BLOCK_D)
    start = pid_s * items_per_split
    stop = tl.minimum(start + items_per_split, n_items)

    # Running top-K per query; it starts as K_PAD "no item" keys (-inf with the lowest tie rank).
    empty = (tl.full((BLOCK_Q, K_PAD), float("-inf"), tl.float32)).to(tl.int32, bitcast=True)
    best = (empty ^ ((empty >> 31) & 0x7FFFFFFF)).to(tl.int64) << 32
    kth = tl.min(best, axis=1)  # the key to beat, per query

    for tile in range(start, stop, K_PAD):
        idx = tile + tl.arange(0, K_PAD)
        acc = tl.zeros((BLOCK_Q, K_PAD), dtype=tl.float32)
        for d0 in range(0, dim, BLOCK_D):  # Q is re-read from L1/L2; X is read once from HBM
            d = d0 + cols_d
            q = tl.load(
                Q_ptr + rows[:, None] * q_stride + d[None, :],
                mask=row_ok[:, None] & (d[None, :] < dim),
                other=0.0,
            )
            x = tl.load(
                X_ptr + idx[:, None] * x_stride + d[None, :],
                mask=(idx[:, None] < stop) & (d[None, :] < dim),
                other=0.0,
            )
            if UPCAST:  # the interpreter's bf16 dot is wrong; fp32 is exact for every input dtype
                q = q.to(tl.float32)
                x = x.to(tl.float32)
            acc += tl.dot(q, tl.trans(x), input_precision=DOT_PRECISION)
        keys = _score_keys(acc, idx, excl, DELETED_ptr, stop, HAS_DELETED)
        # Merge only when some score in the tile beats some query's current k-th best: after the first
        # few tiles almost none do, and the scan runs at the speed of the loads.
        if (
            tl.max((tl.max(keys, axis=1) > kth).to(tl.int32), axis=0) > 0
        ):  # a compare: differences overflow int64
            both = tl.reshape(tl.join(best, keys), (BLOCK_Q, 2 * K_PAD))
            both = tl.sort(both, dim=1, descending=True)
            top, _ = tl.split(tl.permute(tl.reshape(both, (BLOCK_Q, 2, K_PAD)), (0, 2, 1)))
            best = top
            kth = tl.min(best, axis=1)

    out = OUT_ptr + rows[:, None] * out_stride_q + pid_s * out_stride_s + tl.arange(0, K_PAD)[None, :]
    tl.store(out, best, mask=row_ok[:, None])


def _launch(queries, items, k, exclude, deleted):
    n_q, dim = queries.shape
    n = items.shape[0]
    k_pad = max(16, triton.next_power_of_2(k))
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    block_q = 16
    # The (K_PAD, BLOCK_D) item tile and the (BLOCK_Q, 2 K_PAD) int64 merge must fit in shared memory.
    block_d = min(128, max(16, triton.next_power_of_2(dim)), max(16, 32768 // k_pad))
    # Enough programs to fill the GPU even when q is small: split the items, >= 1 tile per split.
    q_blocks = triton.cdiv(n_q, block_q)
    target = (
        1
        if interpret
        else max(1, (4 * torch.cuda.get_device_properties(items.device).multi_processor_count) // q_blocks)
    )
    splits = max(1, min(target, triton.cdiv(n, k_pad)))
    per_split = triton.cdiv(triton.cdiv(n, splits), k_pad) * k_pad
    splits = triton.cdiv(n, per_split)
    partial = torch.empty((n_q, splits, k_pad), dtype=torch.int64, device=items.device)
    excl = (
        exclude.to(torch.int64).contiguous()
        if exclude is not None
        else torch.full((n_q,), -1, dtype=torch.int64, device=items.device)
    )
    dead = (
        deleted.to(torch.int8).contiguous() if deleted is not None else excl
    )  # unused when HAS_DELETED is False
    _cosine_topk_kernel[(q_blocks, splits)](
        queries,
        items,
        excl,
        dead,
        partial,
        n_q,
        n,
        dim,
        per_split,
        queries.stride(0),
        items.stride(0),
        partial.stride(0),
        partial.stride(1),
        K_PAD=k_pad,
        BLOCK_Q=block_q,
        BLOCK_D=block_d,
        DOT_PRECISION="ieee",  # fp32 inputs: exact products, not TF32 (fp16/bf16 ignore it)
        HAS_DELETED=deleted is not None,
        UPCAST=interpret or queries.dtype == torch.float32,
        num_warps=8 if k_pad >= 256 else 4,
    )
    keys = partial.reshape(n_q, splits * k_pad)
    top = torch.topk(keys, min(k, n), dim=1).values if splits > 1 else keys[:, : min(k, n)]  # keys are unique
    return _unpack(top)


def _unpack(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ordered = (keys >> 32).to(torch.int32)
    bits = ordered ^ ((ordered >> 31) & 0x7FFFFFFF)
    scores = bits.view(torch.float32)
    index = _LOW32 - (keys & _LOW32)
    index = torch.where(torch.isneginf(scores), torch.full_like(index, -1), index)
    return scores, index


def cosine_topk_triton(queries, items, k, exclude=None, deleted=None):
    """The Triton path (CUDA, or any device under TRITON_INTERPRET=1); see the module contract."""
    if queries.dtype != items.dtype:
        raise ValueError(f"queries are {queries.dtype} but items are {items.dtype}")
    if k > MAX_KERNEL_K:
        raise ValueError(f"the kernel handles k <= {MAX_KERNEL_K}, got {k}")
    return _launch(queries.contiguous(), items.contiguous(), k, exclude, deleted)


def cosine_topk(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    exclude: torch.Tensor | None = None,
    deleted: torch.Tensor | None = None,
    force: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine per query: the Triton kernel on CUDA tensors, the PyTorch reference elsewhere.

    `force` = "triton" or "reference" overrides the choice (tests); k > MAX_KERNEL_K uses the reference.
    """
    if queries.ndim != 2 or items.ndim != 2 or queries.shape[1] != items.shape[1]:
        raise ValueError(
            f"expected queries (q, d) and items (n, d), got {tuple(queries.shape)} and {tuple(items.shape)}"
        )
    if k <= 0:
        raise ValueError(f"k must be positive, got {k}")
    if exclude is not None and exclude.shape != (queries.shape[0],):
        raise ValueError(
            f"exclude must have one index per query, shape ({queries.shape[0]},), got {tuple(exclude.shape)}"
        )
    if deleted is not None and deleted.shape != (items.shape[0],):
        raise ValueError(
            f"deleted must be a mask over the items, shape ({items.shape[0]},), got {tuple(deleted.shape)}"
        )
    if use_triton(items, force, CUDA_DEFAULT) and (k <= MAX_KERNEL_K or force == "triton"):
        return cosine_topk_triton(queries, items, k, exclude, deleted)
    return cosine_topk_reference(queries, items, k, exclude, deleted)
