"""The Triton cosine top-k against the reference: on CPU through TRITON_INTERPRET=1, on CUDA for real."""

import pytest
import torch
import torch.nn.functional as F

from llmrec.kernels.cosine_topk import MAX_KERNEL_K, cosine_topk
from llmrec.kernels.reference import cosine_topk_reference

# The kernel runs where the tensors live: CUDA when there is one, else the interpreter on CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def normed(n, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype)


def check(q, x, k, exclude=None, deleted=None, atol=1e-5):
    on = [t.to(DEVICE) if t is not None else None for t in (q, x, exclude, deleted)]
    got_s, got_i = (t.cpu() for t in cosine_topk(*on[:2], k, *on[2:], force="triton"))
    ref_s, ref_i = cosine_topk_reference(q, x, k, exclude, deleted)
    assert got_s.shape == ref_s.shape == got_i.shape
    err = (got_s - ref_s).abs().nan_to_num(0).max().item()
    assert torch.allclose(got_s, ref_s, atol=atol, equal_nan=True), f"max score error {err}"
    assert torch.equal(got_i, ref_i), f"indices differ in {(got_i != ref_i).sum().item()} slots"


# (q, n, d, k): one query, non-power-of-two d and n, k > n, k == n, several tiles and splits.
SHAPES = [(1, 37, 5, 4), (3, 50, 24, 50), (2, 20, 7, 64), (17, 100, 33, 10), (2, 70, 16, 40)]


@pytest.mark.parametrize("q,n,d,k", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matches_reference(q, n, d, k, dtype):
    x = normed(n, d, dtype, seed=n)
    queries = normed(q, d, dtype, seed=q)
    # Low-precision inputs: the kernel accumulates in fp32, as the reference does after upcasting.
    check(queries, x, k)


def test_exclusion_and_deleted_items():
    x = normed(90, 12, torch.float32, seed=1)
    q = x[[0, 5, 89]]
    deleted = torch.zeros(90, dtype=torch.bool)
    deleted[[1, 2, 3, 40]] = True
    check(q, x, 20, exclude=torch.tensor([0, 5, -1]), deleted=deleted)


def test_duplicate_scores_break_ties_by_index():
    x = F.normalize(torch.tensor([[1.0, 0.0]] * 40 + [[0.6, 0.8]] * 40), dim=1)
    check(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), x, 50, exclude=torch.tensor([3, -1]))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "q,n,d,k",
    [(1, 1_000_000, 128, 100), (16, 100_000, 384, 10), (256, 200_000, 64, 512), (4, 50_000, 64, 1024)],
)
def test_cuda_realistic(q, n, d, k):
    x = normed(n, d, torch.float16, seed=0).cuda()
    queries = normed(q, d, torch.float16, seed=1).cuda()
    got_s, got_i = cosine_topk(queries, x, k, force="triton" if k <= MAX_KERNEL_K else None)
    ref_s, ref_i = cosine_topk_reference(queries, x, k)
    assert torch.allclose(got_s, ref_s, atol=1e-3)
    assert (got_i == ref_i).float().mean() > 0.999  # fp16 products can reorder near-equal scores
