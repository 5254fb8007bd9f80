"""Choosing calibrated stacking's constant, and the generalised zero-shot scores.

``gamma`` is chosen without any unseen image: on the seen classes' validation images (training images when none
are held out), ``margin = best seen score - best unseen score``; an image goes to an unseen class once
``gamma > margin``. ``gamma`` is set so that a fraction ``unseen_rate`` (default 5 %) of seen images would be
given to an unseen class: the price paid on seen classes is fixed in advance, and every unseen image whose true
class is within that margin of the seen ones is recovered.
"""

from __future__ import annotations

import numpy as np

UNSEEN_RATE = 0.05


def choose_gamma(scores: np.ndarray, seen: np.ndarray, unseen_rate: float = UNSEEN_RATE) -> float:
    """``gamma`` from seen images' DAP scores ``(N, classes)`` and the seen mask ``(classes,)``."""
    seen = np.asarray(seen) > 0
    if seen.all() or not len(scores):
        return 0.0
    margin = scores[:, seen].max(axis=1) - scores[:, ~seen].max(axis=1)
    return float(np.quantile(margin, unseen_rate))


def stacked_probabilities(scores: np.ndarray, seen: np.ndarray, gamma: float) -> np.ndarray:
    """Softmax of ``scores - gamma * seen``: what the head outputs for the DAP scores ``scores``."""
    z = scores - gamma * (np.asarray(seen) > 0)[None, :]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def gzsl_scores(probabilities: np.ndarray, labels: np.ndarray, seen: np.ndarray) -> dict:
    """Generalised zero-shot accuracy: per-class mean accuracy on seen and on unseen images with every class
    competing, their harmonic mean, and the unseen images' accuracy among unseen classes only (classic zero-shot);
    None where a group has no image."""
    seen = np.asarray(seen) > 0
    labels = np.asarray(labels, np.int64)
    predicted = probabilities.argmax(axis=1)
    unseen_only = np.where(seen[None, :], -np.inf, probabilities).argmax(axis=1)

    def per_class(mask, guess):
        classes = np.unique(labels[mask])
        if not len(classes):
            return None
        return float(np.mean([np.mean(guess[labels == k] == k) for k in classes]))

    on_seen = seen[labels]
    s, u = per_class(on_seen, predicted), per_class(~on_seen, predicted)
    h = None if s is None or u is None else (0.0 if s + u == 0 else 2 * s * u / (s + u))
    return {"seen_accuracy": s, "unseen_accuracy": u, "harmonic_mean": h,
            "unseen_only_accuracy": per_class(~on_seen, unseen_only),
            "num_seen": int(on_seen.sum()), "num_unseen": int((~on_seen).sum())}
