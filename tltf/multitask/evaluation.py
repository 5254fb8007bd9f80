"""A multitask model scored task by task: accuracy, per-class accuracy and confusion matrix of each task, their
mean (``accuracy``) and the share of images with every task right (``all_correct``)."""

from __future__ import annotations

import numpy as np


def evaluate_tasks(model, dataset, labels, segments, forward=None) -> dict:
    """Scores of ``model`` over a batched ``(pixels, joint labels)`` dataset; ``labels``: the data's
    :class:`tltf.data.tasks.TaskLabels`; ``segments``: the model's ``(task, start, stop, classes)``. A data class
    the model's task lacks is a one-line error (:func:`tltf.training.evaluation.label_mapping`). ``forward``: the
    model's traced inference function when the caller scores several datasets (one trace for all)."""
    import tensorflow as tf

    from tltf.errors import TltfError
    from tltf.multitask.objective import task_predictions
    from tltf.training.evaluation import label_mapping, scores

    data_tasks = labels.as_dict()
    missing = [name for name, *_ in segments if name not in data_tasks]
    if missing:
        raise TltfError(f"--data: no label column {missing[0]!r} for the model's task of that name")
    columns = [labels.names.index(name) for name, *_ in segments]
    mappings = [label_mapping(data_tasks[name], classes) for name, _, _, classes in segments]
    forward = forward or tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    true, pred = [], []
    for x, y in dataset:
        pred.append(task_predictions(np.asarray(forward(x)), segments))
        split = labels.split(np.asarray(y))
        true.append(np.stack([mapping[split[:, c]] for mapping, c in zip(mappings, columns)], axis=1))
    n_tasks = len(segments)
    true_a = np.concatenate(true) if true else np.zeros((0, n_tasks), int)
    pred_a = np.concatenate(pred) if pred else np.zeros((0, n_tasks), int)
    n = int(len(true_a))
    tasks = {name: scores(true_a[:, t], pred_a[:, t], classes) for t, (name, _, _, classes) in enumerate(segments)}
    return {"accuracy": float(np.mean([t["accuracy"] for t in tasks.values()])) if n else None, "n": n,
            "all_correct": float((true_a == pred_a).all(axis=1).mean()) if n else None, "tasks": tasks}
