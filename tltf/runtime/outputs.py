"""What a classifier's outputs mean: probabilities, each task's columns, the top classes (numpy only)."""

from __future__ import annotations

import numpy as np


def class_probabilities(outputs) -> np.ndarray:
    """Model outputs as ``(N, num_classes)`` probabilities (a binary head's single sigmoid becomes two columns)."""
    out = np.asarray(outputs, dtype=np.float32)
    if out.ndim == 2 and out.shape[1] == 1:
        return np.concatenate([1.0 - out, out], axis=1)
    return out


def task_segments(tasks) -> list[tuple[str, int, int, list[str]]]:
    """``(task, first column, column after the last, classes)`` of each task of ``tasks`` (``[(name, classes)]``)
    in an output that holds the tasks' probabilities side by side, task after task.

    >>> task_segments([("digit", list("0123456789")), ("parity", ["even", "odd"])])[1][:3]
    ('parity', 10, 12)
    """
    out, start = [], 0
    for name, classes in tasks:
        out.append((name, start, start + len(classes), list(classes)))
        start += len(classes)
    return out


def top_k(probabilities: np.ndarray, class_names, k: int) -> list[list[dict]]:
    """Per row, the ``k`` best ``{"index", "label", "score"}`` in decreasing score (ties by lower index)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    k = max(1, min(int(k), probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = list(class_names) if class_names is not None else None
    if names is not None and len(names) != probs.shape[1]:
        names = None  # names that do not fit the output would mislabel: fall back to indices
    return [[{"index": int(i), "label": names[i] if names else None, "score": float(row[i])} for i in idx]
            for row, idx in zip(probs, order)]
