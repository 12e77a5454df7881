import pytest
import torch

from llmrec.kernels import cosine_topk
from llmrec.kernels.reference import cosine_topk_reference


def test_matches_full_sort_and_excludes_the_query():
    torch.manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(37, 5), dim=1)
    q = x[[3, 10]]
    scores, idx = cosine_topk(q, x, k=5, exclude=torch.tensor([3, 10]))
    assert 3 not in idx[0].tolist() and 10 not in idx[1].tolist()
    full = q @ x.T
    full[0, 3] = full[1, 10] = -2
    assert torch.allclose(scores, full.sort(dim=1, descending=True).values[:, :5])


def test_ties_break_toward_the_lower_index():
    x = torch.tensor([[1.0, 0.0]] * 4 + [[0.0, 1.0]])
    _, idx = cosine_topk_reference(torch.tensor([[1.0, 0.0]]), x, k=3, exclude=torch.tensor([1]))
    assert idx.tolist() == [[0, 2, 3]]


def test_k_beyond_the_eligible_items_pads_with_minus_one():
    x = torch.eye(3)
    scores, idx = cosine_topk(
        x[:1], x, k=10, exclude=torch.tensor([0]), deleted=torch.tensor([False, False, True])
    )
    assert idx.tolist() == [[1, -1, -1]] and torch.isneginf(scores[0, 1:]).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be positive"):
        cosine_topk(torch.eye(2), torch.eye(2), k=0)
    with pytest.raises(ValueError, match=r"expected queries \(q, d\)"):
        cosine_topk(torch.eye(2), torch.eye(3), k=1)
    with pytest.raises(ValueError, match="exclude must have one index per query"):
        cosine_topk(torch.eye(2), torch.eye(2), k=1, exclude=torch.tensor([0]))
