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


def test_k_larger_than_catalogue_is_clipped():
    x = torch.eye(3)
    scores, idx = cosine_topk(x[:1], x, k=10, exclude=torch.tensor([0]))
    assert idx.shape == (1, 2)
    scores, idx = cosine_topk(x[:1], x, k=3)
    assert idx.shape == (1, 3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be positive"):
        cosine_topk(torch.eye(2), torch.eye(2), k=0)
    with pytest.raises(ValueError, match=r"expected queries \(q, d\)"):
        cosine_topk(torch.eye(2), torch.eye(3), k=1)
