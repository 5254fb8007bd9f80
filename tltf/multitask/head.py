"""One head per task on shared features: pooling, dropout, then a softmax ``Dense`` per task.

The layer's single output is the tasks' probabilities side by side, ``(batch, sum of the tasks' classes)``, task
after task in the order given: the engine, the feature cache and the trainers see one output, as with any tltf
head. :meth:`MultitaskHead.segments` says which columns belong to which task; the ONNX export turns them into one
named output per task (:mod:`tltf.export.onnx`). ``class_names`` are ``task:class`` for every column.

>>> head = MultitaskHead({"digit": list("0123456789"), "parity": ["even", "odd"]})
>>> [(name, start, stop) for name, start, stop, _ in head.segments()]
[('digit', 0, 10), ('parity', 10, 12)]
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tltf")
class MultitaskHead(keras.layers.Layer):
    """``GlobalAveragePooling2D -> Dropout -> [Dense softmax per task]``, concatenated."""

    def __init__(self, tasks, dropout: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        pairs = list(tasks.items()) if isinstance(tasks, dict) else [tuple(p) for p in tasks]
        self.tasks = {str(name): [str(c) for c in classes] for name, classes in pairs}
        if not self.tasks or any(len(classes) < 2 for classes in self.tasks.values()):
            raise ValueError("every task needs at least two classes")
        self.dropout_rate = float(dropout)
        self.class_names = [f"{name}:{c}" for name, classes in self.tasks.items() for c in classes]
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.drop = keras.layers.Dropout(self.dropout_rate, name="dropout")
        self.denses = [keras.layers.Dense(len(classes), activation="softmax", dtype="float32", name=f"task_{i}")
                       for i, classes in enumerate(self.tasks.values())]

    def build(self, input_shape):
        for dense in self.denses:
            dense.build((input_shape[0], input_shape[-1]))
        self.built = True

    def call(self, features, training=None):
        x = self.pool(features) if len(features.shape) == 4 else features
        x = self.drop(x, training=training)
        return keras.ops.concatenate([dense(x) for dense in self.denses], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], len(self.class_names))

    def segments(self) -> list[tuple[str, int, int, list[str]]]:
        """``(task, first column, column after the last, class names)`` for each task."""
        from tltf.runtime.outputs import task_segments

        return task_segments(self.tasks.items())

    def get_config(self):
        config = super().get_config()
        config.update(tasks=[[name, classes] for name, classes in self.tasks.items()], dropout=self.dropout_rate)
        return config


def segments_of(model) -> list[tuple[str, int, int, list[str]]] | None:
    """The task segments of a model with a :class:`MultitaskHead` among its layers, else None."""
    head = next((layer for layer in getattr(model, "layers", []) if isinstance(layer, MultitaskHead)), None)
    return head.segments() if head is not None else None
