"""Stratified, seeded train/validation splits by index."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)``: ``fraction`` of each class (at least one where the class has two or more) to val.

    >>> train, val = stratified_split(np.array([0] * 8 + [1] * 2), 0.25, seed=1)
    >>> sorted(np.bincount(np.array([0] * 8 + [1] * 2)[val]).tolist())
    [1, 2]
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        n_val = int(round(len(idx) * fraction))
        if fraction > 0 and len(idx) >= 2:
            n_val = min(max(n_val, 1), len(idx) - 1)
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))
