"""Voice embeddings to speakers (pure numpy): spectral clustering as 3D-Speaker and senko do it.

Cosine affinities are pruned to each window's nearest neighbours, the unnormalised Laplacian's eigengap
says how many speakers there are (within the request's bounds), k-means on its first eigenvectors
assigns the windows, clusters of a few windows join their nearest big cluster, and clusters whose
centroids are nearly the same voice are merged. Deterministic: the same embeddings always give the
same labels, so a recording gets the same speakers however its pieces were spread over workers.
"""

from __future__ import annotations

import numpy as np

#: Each window keeps this share of its strongest affinities, and at least MIN_NEIGHBOURS of them (a
#: quarter of the windows when there are few: more would join voices that speak little).
PRUNE_SHARE = 0.012
MIN_NEIGHBOURS = 10
#: Clusters with fewer windows than this are noise or crosstalk: their windows join the nearest big cluster.
MIN_CLUSTER = 4
#: Clusters whose centroids are at least this similar are one voice. senko merges at 0.875 over windows
#: that overlap by 60%; ours do not overlap, so one voice's clusters are a little further apart.
MERGE_COSINE = 0.8
#: Fewer windows than this are one speaker unless the request says otherwise (too few to cluster).
MIN_WINDOWS = 6
DEFAULT_MAX = 10


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _kmeans(x: np.ndarray, k: int, seed: int = 0, tries: int = 4, steps: int = 100) -> np.ndarray:
    """Labels of k-means (k-means++ starts, best of `tries`), seeded: deterministic."""
    rng = np.random.default_rng(seed)
    best, best_cost = np.zeros(len(x), dtype=int), np.inf
    for _ in range(tries):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):
            d = np.min(((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
            total = d.sum()
            centres.append(x[rng.choice(len(x), p=d / total)] if total > 0 else x[rng.integers(len(x))])
        c = np.array(centres)
        labels = np.zeros(len(x), dtype=int)
        for _ in range(steps):
            labels_new = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
            if np.array_equal(labels_new, labels) and _ > 0:
                break
            labels = labels_new
            for j in range(k):
                if np.any(labels == j):
                    c[j] = x[labels == j].mean(0)
        cost = float(((x - c[labels]) ** 2).sum())
        if cost < best_cost:
            best, best_cost = labels, cost
    return best


def _spectral(x: np.ndarray, min_k: int, max_k: int) -> np.ndarray:
    n = len(x)
    sim = x @ x.T
    keep = max(int(PRUNE_SHARE * n), min(MIN_NEIGHBOURS, n // 4), 2)
    if keep < n:
        # Zero all but each row's `keep` strongest affinities.
        lowest = np.argsort(sim, axis=1)[:, : n - keep]
        np.put_along_axis(sim, lowest, 0.0, axis=1)
    sim = 0.5 * (sim + sim.T)
    np.fill_diagonal(sim, 0.0)
    laplacian = np.diag(np.abs(sim).sum(axis=1)) - sim
    values, vectors = np.linalg.eigh(laplacian)
    high = min(max_k, n - 1)
    low = min(min_k, high)
    gaps = np.diff(values[low - 1 : high + 1])
    k = int(np.argmax(gaps)) + low if gaps.size else low
    if k <= 1:
        return np.zeros(n, dtype=int)
    return _kmeans(vectors[:, :k], k)


def _centroids(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(labels)
    return ids, _unit(np.stack([x[labels == i].mean(0) for i in ids]))


def _absorb_small(x: np.ndarray, labels: np.ndarray, keep_at_least: int) -> np.ndarray:
    ids, sizes = np.unique(labels, return_counts=True)
    big = ids[sizes >= MIN_CLUSTER]
    if len(big) == 0 or len(big) < keep_at_least:
        return labels
    centres = np.stack([_unit(x[labels == i].mean(0)) for i in big])
    small = ~np.isin(labels, big)
    labels = labels.copy()
    labels[small] = big[np.argmax(x[small] @ centres.T, axis=1)]
    return labels


def _merge_similar(x: np.ndarray, labels: np.ndarray, min_k: int, threshold: float) -> np.ndarray:
    labels = labels.copy()
    while True:
        ids, centres = _centroids(x, labels)
        if len(ids) <= max(1, min_k):
            return labels
        affinity = np.triu(centres @ centres.T, 1)
        i, j = np.unravel_index(int(np.argmax(affinity)), affinity.shape)
        if affinity[i, j] < threshold:
            return labels
        labels[labels == ids[j]] = ids[i]


def cluster(
    embeddings: np.ndarray, min_speakers: int = 0, max_speakers: int = 0, merge_cosine: float = MERGE_COSINE
) -> np.ndarray:
    """A speaker index (0, 1, ...) for each unit-length embedding (rows), numbered by first appearance."""
    n = len(embeddings)
    if n == 0:
        return np.zeros(0, dtype=int)
    x = _unit(embeddings.astype(np.float64))
    high = max_speakers or DEFAULT_MAX
    low = max(1, min(min_speakers or 1, high))
    if n < max(MIN_WINDOWS, low + 1):
        labels = np.zeros(n, dtype=int) if low <= 1 else _kmeans(x, min(low, n))
    else:
        labels = _spectral(x, low, high)
        labels = _absorb_small(x, labels, low)
        labels = _merge_similar(x, labels, low, merge_cosine)
        ids = np.unique(labels)
        while len(ids) > high:  # absorbing never adds clusters, but k-means may leave more than asked
            labels = _merge_similar(x, labels, high, -1.0)
            ids = np.unique(labels)
    # Number speakers by first appearance.
    order: dict[int, int] = {}
    for label in labels:
        order.setdefault(int(label), len(order))
    return np.array([order[int(label)] for label in labels], dtype=int)


def centroids(embeddings: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Unit-length mean embedding of each speaker index 0..max(labels)."""
    if len(labels) == 0:
        return np.zeros((0, embeddings.shape[1] if embeddings.ndim == 2 else 0))
    x = _unit(embeddings.astype(np.float64))
    return np.stack([_unit(x[labels == i].mean(0)) for i in range(int(labels.max()) + 1)])
