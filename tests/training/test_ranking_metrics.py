import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from llmrec.training.ranking_metrics import impression_auc, impression_metrics


def test_by_hand():
    labels = np.array([[1, 0, 0], [1, 0, 0]])
    scores = np.array([[3.0, 1.0, 2.0], [1.0, 3.0, 2.0]])
    got = impression_metrics(labels, scores)
    # Row 1: clicked item first (AUC 1, RR 1, nDCG 1). Row 2: clicked item last (AUC 0, RR 1/3, nDCG 1/log2(4)).
    assert got == pytest.approx(
        {"AUC": 0.5, "MRR": (1 + 1 / 3) / 2, "nDCG@5": (1 + 0.5) / 2, "nDCG@10": (1 + 0.5) / 2}
    )


def test_ties_count_half():
    assert impression_auc(np.array([[1, 0, 0]]), np.array([[1.0, 1.0, 0.0]])).tolist() == [0.75]


def test_auc_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    labels = np.zeros((50, 5))
    labels[:, 0] = 1
    labels[::3, 2] = 1
    scores = rng.integers(0, 4, size=(50, 5)).astype(float)  # many ties
    expected = [roc_auc_score(y, s) for y, s in zip(labels, scores, strict=True)]
    assert np.allclose(impression_auc(labels, scores), expected)


def test_bad_input():
    with pytest.raises(ValueError, match="at least one clicked and one non-clicked"):
        impression_metrics(np.ones((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="NaN or inf"):
        impression_metrics(np.array([[1, 0]]), np.array([[np.nan, 0.0]]))
