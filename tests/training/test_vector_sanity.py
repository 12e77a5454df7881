"""The vector sanity figures on hand-made vectors."""

import pandas as pd
import pytest
import torch

from llmrec.training import vector_sanity


def test_mean_pairwise_cosine_by_hand():
    same = torch.ones(5, 3)
    assert vector_sanity.mean_pairwise_cosine(same) == pytest.approx(1.0)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -3.0]])
    assert vector_sanity.mean_pairwise_cosine(opposite) == pytest.approx(-1 / 3)  # 2 pairs at -1, 4 at 0
    torch.manual_seed(0)
    v = torch.randn(30, 4)
    n = torch.nn.functional.normalize(v, dim=1)
    brute = ((n @ n.T).sum() - 30) / (30 * 29)
    assert vector_sanity.mean_pairwise_cosine(v) == pytest.approx(float(brute), abs=1e-6)


def test_category_agreement_against_random():
    # Two tight clusters that match the categories: every neighbour agrees; random gives (n_c - 1) / (n - 1).
    v = torch.tensor([[1.0, 0.01 * i] for i in range(4)] + [[0.01 * i, 1.0] for i in range(6)])
    cats = ["a"] * 4 + ["b"] * 6
    agree, random = vector_sanity.category_agreement(v, cats, k=3)
    assert agree == pytest.approx(1.0)
    assert random == pytest.approx((4 * 3 / 9 + 6 * 5 / 9) / 10)
    sampled, _ = vector_sanity.category_agreement(v, cats, k=3, max_queries=5)
    assert sampled == pytest.approx(1.0)


def test_neighbours_name_titles_and_skip_unknown_ids():
    items = pd.DataFrame({"item_id": ["1", "2", "3"], "title": ["A", "B", "C"], "category": ["x", "x", "y"]})
    v = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    got = vector_sanity.neighbours(v, items, ["1", "nope"], k=2)
    assert got == [{"item": "A", "neighbours": "B (0.99); C (0.00)"}]


def test_near_twin_share_finds_clumps_that_the_mean_cosine_hides():
    # Four tight pairs at right angles: mean cosine near 0, yet every item has a twin above 0.95.
    axes = torch.eye(4)
    clumped = torch.cat([axes, axes + 0.01 * torch.ones(4, 4)])
    assert abs(vector_sanity.mean_pairwise_cosine(clumped)) < 0.2
    assert vector_sanity.near_twin_share(clumped) == pytest.approx(1.0)
    spread = torch.cat([torch.eye(4), -torch.eye(4)])
    assert vector_sanity.near_twin_share(spread) == 0.0
    half = torch.cat([axes[:2], axes[:2] * 2, axes[2:], -axes[2:]])  # rows 0-3: two twin pairs; 4-7 alone
    assert vector_sanity.near_twin_share(half) == pytest.approx(0.5)
    assert vector_sanity.near_twin_share(half, max_queries=4) in (0.0, 0.25, 0.5, 0.75, 1.0)
