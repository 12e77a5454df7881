"""Impression-level ranking metrics, as MIND reports them: computed per impression, then averaged.

nDCG@k comes from scikit-learn's ndcg_score and MRR from its label_ranking_average_precision_score (equal to
the reciprocal rank when an impression has one clicked item, the case here). AUC per impression is the
Mann-Whitney statistic (the share of (clicked, not clicked) pairs ordered right, ties counting half),
vectorised over impressions: calling roc_auc_score 10,000 times took 48 s; tests check that the two agree.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import label_ranking_average_precision_score, ndcg_score


def impression_auc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUC of each impression (row); every row needs at least one positive and one negative."""
    pos, neg = labels > 0, labels <= 0
    if not (pos.any(1) & neg.any(1)).all():
        raise ValueError("every impression needs at least one clicked and one non-clicked candidate")
    diff = scores[:, :, None] - scores[:, None, :]  # (n, c, c): score_i - score_j
    pairs = pos[:, :, None] & neg[:, None, :]
    wins = ((diff > 0) + 0.5 * (diff == 0)) * pairs
    return wins.sum((1, 2)) / pairs.sum((1, 2))


def impression_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """labels, scores: (impressions, candidates). Returns AUC, MRR, nDCG@5, nDCG@10 (means over impressions)."""
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(
            f"labels {labels.shape} and scores {scores.shape} must be the same (impressions, candidates)"
        )
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return {
        "AUC": float(impression_auc(labels, scores).mean()),
        "MRR": float(label_ranking_average_precision_score(labels, scores)),
        "nDCG@5": float(ndcg_score(labels, scores, k=5)),
        "nDCG@10": float(ndcg_score(labels, scores, k=10)),
    }
