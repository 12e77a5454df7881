import math

import pytest
import torch

from llmrec.training.notellm.losses import GenerativeContrastiveLoss, combine, generation_loss


def test_gcl_by_hand():
    # Two pairs: a1=b1=e_x, a2=b2=e_y. cos to partner = 1, to the other two notes = 0.
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    loss = GenerativeContrastiveLoss(tau_init=0.0)(v)  # scale e^0 = 1
    expected = -math.log(math.e / (math.e + 2))
    assert abs(loss.item() - expected) < 1e-6


def test_gcl_temperature_is_learnable_and_sharpens():
    gcl = GenerativeContrastiveLoss(tau_init=3.0)
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]], requires_grad=True)
    loss = gcl(v)
    loss.backward()
    assert gcl.tau.grad is not None and gcl.tau.grad.item() < 0  # a bigger scale lowers the loss here
    assert abs(gcl.tau.item() - 3.0) < 1e-12


def test_gcl_ignores_vector_norms():
    v = torch.randn(6, 8)
    gcl = GenerativeContrastiveLoss()
    assert torch.allclose(gcl(v), gcl(v * 7.0), atol=1e-6)


def test_generation_loss_covers_only_labelled_positions():
    vocab, hidden = 5, 3
    head = torch.nn.Linear(hidden, vocab, bias=False)
    torch.nn.init.zeros_(head.weight)  # uniform prediction: loss = log V wherever it is counted
    h = torch.randn(2, 4, hidden)
    labels = torch.tensor([[-100, -100, 2, 3], [-100, -100, -100, 1]])
    assert abs(generation_loss(h, labels, head).item() - math.log(vocab)) < 1e-6
    # Move the only predicted positions: predictions come from the state one step earlier.
    head.weight.data[2, 0] = 100.0
    h2 = torch.zeros(1, 3, hidden)
    h2[0, 1, 0] = 1.0
    assert generation_loss(h2, torch.tensor([[-100, -100, 2]]), head).item() < 1e-6


def test_combine():
    assert combine(torch.tensor(2.0), torch.tensor(10.0), 0.01).item() == pytest.approx((2.0 + 0.1) / 1.01)
