"""What a multitask model is trained and judged on: the weighted sum of the tasks' cross-entropies, each task's
accuracy, and ``accuracy``, the mean of the tasks' accuracies (what the engine's history, refit and reports read).

Labels are joint labels (:mod:`tltf.data.tasks`): a lookup table turns each into one label per task inside the
step, so the data pipeline stays the single-label one.
"""

from __future__ import annotations

import keras
import numpy as np


def parse_weights(text, tasks: list[str]) -> list[float]:
    """``--task-weights 1,0.5`` (one positive number per task, in ``--tasks`` order; default all 1)."""
    from tltf.errors import TltfError

    if text in (None, ""):
        return [1.0] * len(tasks)
    parts = [p.strip() for p in str(text).split(",")] if isinstance(text, str) else list(text)
    try:
        weights = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise TltfError(f"--task-weights {text}: expected numbers separated by commas (e.g. 1,0.5)") from None
    if len(weights) != len(tasks):
        raise TltfError(f"--task-weights {text}: {len(weights)} weights for {len(tasks)} tasks ({', '.join(tasks)})")
    if not all(np.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise TltfError(f"--task-weights {text}: weights must be finite, >= 0 and not all 0")
    return weights


def objective(table: np.ndarray, segments, weights: list[float]) -> dict:
    """``compile`` arguments: ``loss`` and ``metrics`` for joint labels ``y`` and the head's concatenated output.
    ``table``: ``(joint classes, tasks)`` per-task labels; ``segments``: ``(task, start, stop, classes)``."""
    lookup = keras.ops.convert_to_tensor(np.asarray(table, np.int32))
    total = float(sum(weights))
    weights = [w / total for w in weights]  # a weighted mean: the loss keeps the scale of one cross-entropy

    def labels(y_true, t):
        joint = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        return keras.ops.take(lookup[:, t], joint, axis=0)

    def task_probs(y_pred, start, stop):
        probs = keras.ops.cast(y_pred[:, start:stop], "float32")
        return probs / keras.ops.maximum(keras.ops.sum(probs, axis=-1, keepdims=True), 1e-7)

    def loss(y_true, y_pred):
        total_loss = 0.0
        for t, (_, start, stop, _) in enumerate(segments):
            ce = keras.losses.sparse_categorical_crossentropy(labels(y_true, t), task_probs(y_pred, start, stop))
            total_loss = total_loss + weights[t] * ce
        return total_loss

    def task_accuracy(t, start, stop):
        def accuracy(y_true, y_pred):
            hit = keras.ops.equal(keras.ops.argmax(y_pred[:, start:stop], axis=-1), labels(y_true, t))
            return keras.ops.cast(hit, "float32")
        return accuracy

    per_task = []
    for t, (name, start, stop, _) in enumerate(segments):
        fn = task_accuracy(t, start, stop)
        per_task.append(keras.metrics.MeanMetricWrapper(fn, name=f"{name}_accuracy"))

    def mean_accuracy(y_true, y_pred):
        return sum(task_accuracy(t, start, stop)(y_true, y_pred)
                   for t, (_, start, stop, _) in enumerate(segments)) / len(segments)

    return {"loss": loss, "metrics": [keras.metrics.MeanMetricWrapper(mean_accuracy, name="accuracy"), *per_task]}


def task_predictions(probabilities: np.ndarray, segments) -> np.ndarray:
    """``(N, tasks)`` predicted labels from the concatenated output."""
    probabilities = np.asarray(probabilities)
    return np.stack([probabilities[:, start:stop].argmax(axis=1) for _, start, stop, _ in segments], axis=1)
