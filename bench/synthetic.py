"""Large synthetic catalogues whose vectors look like a real one's, for the scale benchmark.

Uniform noise on the sphere is the worst case for an ANN graph (every direction as likely as any other,
no neighbourhoods) and nothing like real item embeddings, which are anisotropic (a few directions carry most
of the variance) and clustered (items come in topics). So the synthetic catalogue is grown from a real one:

    topics  = normalise(real item a + w * real item b + noise)     (w ~ U(0, 1); a, b drawn from the catalogue)
    items   = normalise(topic + noise)                             (each item draws a topic at random)

where both noises are Gaussian with the real catalogue's covariance (so their spectrum is the real one's),
scaled by `topic_spread` and `item_spread`. `describe` gives the statistics that let a reader compare the
two catalogues (mean pairwise cosine, nearest-neighbour cosine quantiles, share of variance in the top 10
principal directions).
"""

from __future__ import annotations

import numpy as np


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def grow_catalogue(
    real: np.ndarray,
    n_items: int,
    n_topics: int | None = None,
    topic_spread: float = 0.5,
    item_spread: float = 0.35,
    seed: int = 0,
    chunk: int = 200_000,
) -> np.ndarray:
    """(n_items, d) float32 unit vectors grown from the real catalogue `real` (m, d) as the module says."""
    rng = np.random.default_rng(seed)
    real = _normalise(np.asarray(real, dtype=np.float64))
    m, d = real.shape
    n_topics = n_topics or max(m, n_items // 100)
    centred = real - real.mean(axis=0)
    cov = centred.T @ centred / max(m - 1, 1)
    root = np.linalg.cholesky(cov + 1e-6 * np.eye(d))  # noise = z @ root.T has covariance `cov`
    a, b = rng.integers(0, m, n_topics), rng.integers(0, m, n_topics)
    w = rng.uniform(0, 1, (n_topics, 1))
    topics = _normalise(real[a] + w * real[b] + topic_spread * rng.standard_normal((n_topics, d)) @ root.T)
    out = np.empty((n_items, d), np.float32)
    for start in range(0, n_items, chunk):
        stop = min(start + chunk, n_items)
        which = rng.integers(0, n_topics, stop - start)
        noise = item_spread * rng.standard_normal((stop - start, d)) @ root.T
        out[start:stop] = _normalise(topics[which] + noise)
    return out


def describe(vectors: np.ndarray, sample: int = 2_000, seed: int = 0) -> dict:
    """Mean pairwise cosine and nearest-neighbour cosine quantiles over a sample of rows (neighbours from
    the whole catalogue), and the variance share of the top 10 principal directions."""
    rng = np.random.default_rng(seed)
    vectors = np.asarray(vectors, np.float32)
    rows = rng.choice(len(vectors), min(sample, len(vectors)), replace=False)
    q = vectors[rows]
    best = np.full(len(rows), -np.inf, np.float32)
    for start in range(0, len(vectors), 100_000):
        sims = q @ vectors[start : start + 100_000].T
        own = (rows >= start) & (rows < start + 100_000)
        sims[np.flatnonzero(own), rows[own] - start] = -np.inf
        best = np.maximum(best, sims.max(axis=1))
    pair = q @ q.T
    off = pair[~np.eye(len(q), dtype=bool)]
    centred = q - q.mean(axis=0)
    spectrum = np.linalg.svd(centred, compute_uv=False) ** 2
    return {
        "items": len(vectors),
        "dim": int(vectors.shape[1]),
        "mean_pairwise_cosine": round(float(off.mean()), 4),
        "nn_cosine_p10_p50_p90": [round(float(x), 4) for x in np.quantile(best, [0.1, 0.5, 0.9])],
        "top10_variance_share": round(float(spectrum[:10].sum() / spectrum.sum()), 4),
    }
