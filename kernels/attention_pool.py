"""Fused masked attention pooling (EaaF's scaled-dot form and the released code's additive form).

One program per row reads its token states E (L, D) once, tile by tile: scores, an online softmax across
the tiles (running max m and sum l, the accumulator rescaled by exp(m_old - m_new)), and the weighted sum.
Masked positions score -inf; the running max starts at a finite -1e30, so a fully masked row ends with
l = 0 and pools to zeros without a NaN. The forward saves lse = m + log(l) per row; the backward
recomputes the weights from it and reads E once more.

Scaled-dot form with a global vector u (EaaF): w . [e_i ; u] = w_e . e_i + w_u . u, and the second term is
the same for every i, so it cancels in the softmax; and sum_i a_i [e_i ; u] = [sum_i a_i e_i ; u]. The kernel
pools E with w_e alone and the launcher appends u: exact, and u is read once instead of L times.

Gradients: dE in the kernel; dw (dot form) from per-row partial sums; for the additive form the kernel
writes dZ = dL/d(V e + b) (B, L, A) and dV = dZ^T E, db, dq are reduced in PyTorch (deterministic).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llmrec.kernels.dispatch import use_triton
from llmrec.kernels.reference import additive_attention_pool_reference, dot_attention_pool_reference


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _scores(
    e,
    offs_d,
    d_ok,
    W_ptr,
    V_ptr,
    B_ptr,
    Q_ptr,
    n_dim,
    n_att,
    scale,
    ADDITIVE: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    """Scores (BLOCK_L,) of a tile e (BLOCK_L, BLOCK_D), and for the additive form also tanh(V e + b)."""
    # One return for both forms: compiled Triton rejects returns of different shapes, even under a
    # constexpr branch.
    if ADDITIVE:
        offs_a = tl.arange(0, BLOCK_A)
        a_ok = offs_a < n_att
        v = tl.load(
            V_ptr + offs_a[:, None] * n_dim + offs_d[None, :], mask=a_ok[:, None] & d_ok[None, :], other=0.0
        )
        bias = tl.load(B_ptr + offs_a, mask=a_ok, other=0.0)
        query = tl.load(Q_ptr + offs_a, mask=a_ok, other=0.0)
        # ieee: tiles are fp32 here, and TF32 would cost ~5e-4 against the reference (memory-bound anyway)
        g = _tanh(tl.dot(e, tl.trans(v), input_precision="ieee") + bias[None, :])  # (BLOCK_L, BLOCK_A)
        s = tl.sum(g * query[None, :], axis=1)
    else:
        w = tl.load(W_ptr + offs_d, mask=d_ok, other=0.0)
        s = tl.sum(e * w[None, :], axis=1) * scale
        g = s[:, None]  # unused in this form
    return s, g


@triton.jit
def _attn_pool_fwd_kernel(
    E_ptr,
    M_ptr,
    W_ptr,
    V_ptr,
    B_ptr,
    Q_ptr,
    H_ptr,
    LSE_ptr,
    seq_len,
    n_dim,
    n_att,
    scale,
    e_stride_b,
    e_stride_l,
    m_stride_b,
    h_stride_b,
    ADDITIVE: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    row = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < n_dim
    m = tl.full((), -1e30, tl.float32)  # finite: exp(m - m_new) never sees -inf - -inf
    l_sum = tl.zeros((), tl.float32)
    acc = tl.zeros((BLOCK_D,), tl.float32)
    for start in range(0, seq_len, BLOCK_L):
        offs_l = start + tl.arange(0, BLOCK_L)
        keep = tl.load(M_ptr + row * m_stride_b + offs_l, mask=offs_l < seq_len, other=0) != 0
        e = tl.load(
            E_ptr + row * e_stride_b + offs_l[:, None] * e_stride_l + offs_d[None, :],
            mask=keep[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)  # masked tokens are never read
        s, _ = _scores(e, offs_d, d_ok, W_ptr, V_ptr, B_ptr, Q_ptr, n_dim, n_att, scale, ADDITIVE, BLOCK_A)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        p = tl.exp(s - m_new)  # 0 at masked positions
        alpha = tl.exp(m - m_new)
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        acc = acc * alpha + tl.sum(p[:, None] * e, axis=0)
        m = m_new
    empty = l_sum == 0.0
    h = tl.where(empty, 0.0, acc / tl.where(empty, 1.0, l_sum))
    tl.store(H_ptr + row * h_stride_b + offs_d, h.to(H_ptr.dtype.element_ty), mask=d_ok)
    tl.store(LSE_ptr + row, tl.where(empty, float("inf"), m + tl.log(tl.where(empty, 1.0, l_sum))))


@triton.jit
def _attn_pool_bwd_kernel(
    E_ptr,
    M_ptr,
    W_ptr,
    V_ptr,
    B_ptr,
    Q_ptr,
    LSE_ptr,
    DH_ptr,
    DELTA_ptr,
    DE_ptr,
    DW_ptr,
    DZ_ptr,
    seq_len,
    n_dim,
    n_att,
    scale,
    e_stride_b,
    e_stride_l,
    m_stride_b,
    dh_stride_b,
    de_stride_b,
    de_stride_l,
    dz_stride_b,
    dz_stride_l,
    ADDITIVE: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_A: tl.constexpr,
):
    row = tl.program_id(0)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < n_dim
    lse = tl.load(LSE_ptr + row)  # +inf for a fully masked row: every weight below is then 0
    dh = tl.load(DH_ptr + row * dh_stride_b + offs_d, mask=d_ok, other=0.0).to(tl.float32)
    delta = tl.load(DELTA_ptr + row)  # dh . h
    dw = tl.zeros((BLOCK_D,), tl.float32)  # dot form: this row's share of d loss / d w
    dq = tl.zeros((BLOCK_A,), tl.float32)  # additive form: this row's share of d loss / d query
    for start in range(0, seq_len, BLOCK_L):
        offs_l = start + tl.arange(0, BLOCK_L)
        in_seq = offs_l < seq_len
        keep = tl.load(M_ptr + row * m_stride_b + offs_l, mask=in_seq, other=0) != 0
        e = tl.load(
            E_ptr + row * e_stride_b + offs_l[:, None] * e_stride_l + offs_d[None, :],
            mask=keep[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        s, g = _scores(e, offs_d, d_ok, W_ptr, V_ptr, B_ptr, Q_ptr, n_dim, n_att, scale, ADDITIVE, BLOCK_A)
        a = tl.where(keep, tl.exp(s - lse), 0.0)  # (BLOCK_L,)
        ds = a * (tl.sum(e * dh[None, :], axis=1) - delta)  # d loss / d score
        de = a[:, None] * dh[None, :]
        if ADDITIVE:
            offs_a = tl.arange(0, BLOCK_A)
            a_ok = offs_a < n_att
            query = tl.load(Q_ptr + offs_a, mask=a_ok, other=0.0)
            v = tl.load(
                V_ptr + offs_a[:, None] * n_dim + offs_d[None, :],
                mask=a_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            dz = ds[:, None] * query[None, :] * (1.0 - g * g)  # (BLOCK_L, BLOCK_A)
            de += tl.dot(dz, v, input_precision="ieee")
            dq += tl.sum(ds[:, None] * g, axis=0)  # d loss / d query, this row's share
            tl.store(
                DZ_ptr + row * dz_stride_b + offs_l[:, None] * dz_stride_l + offs_a[None, :],
                dz,
                mask=in_seq[:, None] & a_ok[None, :],
            )
        else:
            w = tl.load(W_ptr + offs_d, mask=d_ok, other=0.0)
            de += (ds * scale)[:, None] * w[None, :]
            dw += tl.sum((ds * scale)[:, None] * e, axis=0)
        tl.store(
            DE_ptr + row * de_stride_b + offs_l[:, None] * de_stride_l + offs_d[None, :],
            de.to(DE_ptr.dtype.element_ty),
            mask=in_seq[:, None] & d_ok[None, :],
        )
    if ADDITIVE:
        offs_a = tl.arange(0, BLOCK_A)
        tl.store(DW_ptr + row * n_att + offs_a, dq, mask=offs_a < n_att)
    else:
        tl.store(DW_ptr + row * n_dim + offs_d, dw, mask=d_ok)


def _blocks(seq_len: int, dim: int, n_att: int) -> tuple[int, int, int, int]:
    """(BLOCK_L, BLOCK_D, BLOCK_A, num_warps) in one place; the whole row of D stays on chip."""
    block_d = max(16, triton.next_power_of_2(dim))
    block_a = max(16, triton.next_power_of_2(n_att)) if n_att else 16
    block_l = max(16, min(64, triton.next_power_of_2(seq_len), 8192 // block_d))
    return block_l, block_d, block_a, 4 if block_d <= 256 else 8


class _AttentionPool(torch.autograd.Function):
    """Pools tokens (B, L, D) to (B, D); the dot form scores with w_e (D,) scaled by 1/sqrt(vdim)."""

    @staticmethod
    def forward(ctx, tokens, mask, w_e, proj, bias, query, vdim: int):
        additive = proj is not None
        batch, seq_len, dim = tokens.shape
        n_att = proj.shape[0] if additive else 0
        tokens = tokens.contiguous()
        mask = mask.to(torch.int8).contiguous()
        scale = 1.0 if additive else 1.0 / vdim**0.5
        block_l, block_d, block_a, warps = _blocks(seq_len, dim, n_att)
        h = torch.empty((batch, dim), dtype=tokens.dtype, device=tokens.device)
        lse = torch.empty((batch,), dtype=torch.float32, device=tokens.device)
        # Parameters go in as fp32; an absent one is passed as any tensor (its constexpr branch never reads it).
        w_, v_, b_, q_ = (x.float().contiguous() if x is not None else lse for x in (w_e, proj, bias, query))
        _attn_pool_fwd_kernel[(batch,)](
            tokens,
            mask,
            w_,
            v_,
            b_,
            q_,
            h,
            lse,
            seq_len,
            dim,
            n_att,
            scale,
            tokens.stride(0),
            tokens.stride(1),
            mask.stride(0),
            h.stride(0),
            ADDITIVE=additive,
            BLOCK_L=block_l,
            BLOCK_D=block_d,
            BLOCK_A=block_a,
            num_warps=warps,
        )
        ctx.save_for_backward(tokens, mask, w_, v_, b_, q_, h, lse)
        ctx.meta = (additive, scale, block_l, block_d, block_a, warps, n_att)
        return h

    @staticmethod
    def backward(ctx, dh):
        tokens, mask, w_, v_, b_, q_, h, lse = ctx.saved_tensors
        additive, scale, block_l, block_d, block_a, warps, n_att = ctx.meta
        batch, seq_len, dim = tokens.shape
        dh = dh.float().contiguous()
        delta = (dh * h.float()).sum(1).contiguous()  # dh . h per row
        de = torch.empty_like(tokens)
        partial = torch.empty((batch, n_att if additive else dim), dtype=torch.float32, device=tokens.device)
        dz = (
            torch.zeros((batch, seq_len, n_att), dtype=torch.float32, device=tokens.device)
            if additive
            else lse
        )
        _attn_pool_bwd_kernel[(batch,)](
            tokens,
            mask,
            w_,
            v_,
            b_,
            q_,
            lse,
            dh,
            delta,
            de,
            partial,
            dz,
            seq_len,
            dim,
            n_att,
            scale,
            tokens.stride(0),
            tokens.stride(1),
            mask.stride(0),
            dh.stride(0),
            de.stride(0),
            de.stride(1),
            dz.stride(0) if additive else 0,
            dz.stride(1) if additive else 0,
            ADDITIVE=additive,
            BLOCK_L=block_l,
            BLOCK_D=block_d,
            BLOCK_A=block_a,
            num_warps=warps,
        )
        if additive:
            dv = dz.reshape(-1, n_att).T @ tokens.float().reshape(-1, dim)  # (A, D)
            return de, None, None, dv, dz.sum((0, 1)), partial.sum(0), None
        return de, None, partial.sum(0), None, None, None, None


def _check(tokens: torch.Tensor, mask: torch.Tensor) -> None:
    if tokens.ndim != 3:
        raise ValueError(f"tokens must be (B, L, D), got shape {tuple(tokens.shape)}")
    if mask.shape != tokens.shape[:2]:
        raise ValueError(f"mask must be (B, L) = {tuple(tokens.shape[:2])}, got {tuple(mask.shape)}")


def dot_attention_pool(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    w: torch.Tensor,
    global_vec: torch.Tensor | None = None,
    force: str | None = None,
) -> torch.Tensor:
    """EaaF pooling (see `reference.dot_attention_pool_reference`): Triton on CUDA, reference elsewhere."""
    _check(tokens, mask)
    dim, extra = tokens.shape[-1], 0 if global_vec is None else global_vec.shape[-1]
    if w.shape != (dim + extra,):
        raise ValueError(
            f"w must have {dim + extra} entries (token dim {dim} + global dim {extra}), got {tuple(w.shape)}"
        )
    if not use_triton(tokens, force):
        return dot_attention_pool_reference(tokens, mask, w, global_vec)
    pooled = _AttentionPool.apply(tokens, mask, w[:dim], None, None, None, dim + extra)
    if global_vec is None:
        return pooled
    valid = mask.bool().any(1, keepdim=True).to(global_vec.dtype)  # a fully masked row stays all zeros
    return torch.cat([pooled, (global_vec * valid).to(pooled.dtype)], dim=-1)


def additive_attention_pool(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    proj: torch.Tensor,
    bias: torch.Tensor,
    query: torch.Tensor,
    force: str | None = None,
) -> torch.Tensor:
    """Additive pooling (see `reference.additive_attention_pool_reference`): Triton on CUDA, else reference."""
    _check(tokens, mask)
    if (
        proj.ndim != 2
        or proj.shape[1] != tokens.shape[-1]
        or bias.shape != proj.shape[:1]
        or query.shape != proj.shape[:1]
    ):
        raise ValueError(
            f"expected proj (A, {tokens.shape[-1]}), bias (A,), query (A,); got "
            f"{tuple(proj.shape)}, {tuple(bias.shape)}, {tuple(query.shape)}"
        )
    if not use_triton(tokens, force):
        return additive_attention_pool_reference(tokens, mask, proj, bias, query)
    return _AttentionPool.apply(tokens, mask, None, proj, bias, query, tokens.shape[-1])
