"""The classification head: global pooling, dropout, dense classifier; it carries the class names.

Binary problems (two classes) get one sigmoid unit, others a softmax over the classes. The output is always
float32, also under mixed precision. Class names live in the layer's config, so they travel inside ``model.keras``.
With ``normalize=True`` the pooled features are standardised (two fixed vectors, ``centre`` and ``inv_std``) and
L2-normalised before the ``Dense`` layer: the form of a prototype classifier (:mod:`tltf.fewshot.prototypes`).

>>> head = ClassifierHead(["cat", "dog"])
>>> head(np.zeros((1, 7, 7, 32), "float32")).shape      # doctest: +SKIP
(1, 1)
"""

from __future__ import annotations

import keras

from tltf.runtime.outputs import class_probabilities  # noqa: F401  (tltf.models.head.* as before)


@keras.saving.register_keras_serializable(package="tltf")
class ClassifierHead(keras.layers.Layer):
    """``GlobalAveragePooling2D -> Dropout -> Dense`` with ``class_names`` in its config."""

    def __init__(self, class_names, dropout: float = 0.2, normalize: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.normalize = bool(normalize)
        self.class_names = [str(c) for c in class_names]
        if len(self.class_names) < 2:
            raise ValueError("a classifier needs at least two classes")
        self.dropout_rate = float(dropout)
        self.binary = len(self.class_names) == 2
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.drop = keras.layers.Dropout(self.dropout_rate, name="dropout")
        self.dense = keras.layers.Dense(1 if self.binary else len(self.class_names),
                                        activation="sigmoid" if self.binary else "softmax",
                                        dtype="float32", name="classifier")

    def build(self, input_shape):
        width = input_shape[-1]
        if self.normalize:  # fixed statistics, set by whoever imprints the head
            self.centre = self.add_weight(name="centre", shape=(width,), initializer="zeros", trainable=False,
                                          dtype="float32")
            self.inv_std = self.add_weight(name="inv_std", shape=(width,), initializer="ones", trainable=False,
                                           dtype="float32")
        self.dense.build((input_shape[0], width))
        self.built = True

    def call(self, features, training=None):
        x = self.pool(features) if len(features.shape) == 4 else features
        if self.normalize:
            x = (keras.ops.cast(x, "float32") - self.centre) * self.inv_std
            x = x / keras.ops.maximum(keras.ops.sqrt(keras.ops.sum(x * x, axis=-1, keepdims=True)), 1e-6)
        return self.dense(self.drop(x, training=training))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 1 if self.binary else len(self.class_names))

    def get_config(self):
        config = super().get_config()
        config.update(class_names=self.class_names, dropout=self.dropout_rate)
        if self.normalize:
            config["normalize"] = True
        return config


def loss_and_metrics(binary: bool) -> dict:
    """``compile`` arguments for a :class:`ClassifierHead`'s output: cross-entropy and an ``accuracy`` metric (a
    binary head is one sigmoid and takes 0/1 labels; otherwise a softmax over integer labels)."""
    if binary:
        return {"loss": keras.losses.BinaryCrossentropy(),
                "metrics": [keras.metrics.BinaryAccuracy(name="accuracy")]}
    return {"loss": keras.losses.SparseCategoricalCrossentropy(),
            "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]}

