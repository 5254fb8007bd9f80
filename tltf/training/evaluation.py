"""Accuracy, per-class accuracy and confusion matrix of a classifier over a labelled dataset."""

from __future__ import annotations

import keras
import numpy as np

from tltf.errors import TltfError
from tltf.runtime.outputs import class_probabilities
from tltf.reporting import confusion_matrix


def evaluate_model(model: keras.Model, dataset, data_classes: list[str], model_classes: list[str]) -> dict:
    """Accuracy, per-class accuracy and confusion matrix of ``model`` over a batched ``(pixels, labels)`` dataset."""
    import tensorflow as tf

    mapping = label_mapping(data_classes, model_classes)
    forward = tf.function(lambda x: model(x, training=False))  # not predict_on_batch: under tf.distribute it
    true, pred = [], []                                        # returns every replica's copy of the batch
    for x, y in dataset:
        probs = class_probabilities(np.asarray(forward(x)))
        pred.append(probs.argmax(axis=1))
        true.append(mapping[np.asarray(y)])
    true_a = np.concatenate(true) if true else np.zeros(0, int)
    pred_a = np.concatenate(pred) if pred else np.zeros(0, int)
    return scores(true_a, pred_a, model_classes)


def scores(true: np.ndarray, pred: np.ndarray, classes: list[str]) -> dict:
    """``accuracy``, ``n``, ``per_class`` accuracy, ``classes`` and ``confusion`` of integer labels ``true`` vs
    predictions ``pred`` over ``classes``."""
    cm = confusion_matrix(true, pred, len(classes))
    per_class = {name: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, name in enumerate(classes)}
    n = int(len(true))
    return {"accuracy": float((true == pred).mean()) if n else None, "n": n, "per_class": per_class,
            "classes": list(classes), "confusion": cm.tolist()}


def label_mapping(data_classes: list[str], model_classes: list[str]) -> np.ndarray:
    """Index of each data class among the model's classes; a one-line error for a class the model lacks."""
    missing = [c for c in data_classes if c not in model_classes]
    if missing:
        raise TltfError(f"--data: class {missing[0]!r} is not one of the model's classes "
                        f"({', '.join(model_classes[:10])}{'…' if len(model_classes) > 10 else ''})")
    return np.array([model_classes.index(c) for c in data_classes], dtype=np.int64)
