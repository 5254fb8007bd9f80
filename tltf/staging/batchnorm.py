"""Precise BatchNorm statistics for backbones whose BatchNorm trains (``--weights none``, ``--train-bn``).

BatchNorm layers normalise with batch statistics while training and with moving averages at inference. Keras
Applications update those averages slowly (momentum 0.99-0.999), so after a short budget from random weights the
averages still describe the network of hundreds of steps ago and inference mode is wrong although training went
well: measured, MobileNetV2 from scratch on ``builtin:lfw_faces`` (6 epochs, 30 steps) trained to 0.94 accuracy but
scored 0.500 on validation, a constant output; with the statistics recomputed, 0.925. This is "precise BN" (Wu &
Johnson, "Rethinking 'Batch' in BatchNorm", 2021): before each evaluation the moving mean and variance are reset
and set to the plain average of the statistics of ``batches`` training batches under the current weights.
"""

from __future__ import annotations

import keras
import numpy as np

from tltf.models.classifier import backbone_layer

DEFAULT_BATCHES = 16


def _batchnorm_layers(model: keras.Model) -> list:
    net = backbone_layer(model).net
    return [layer for layer in net._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def recompute_batchnorm(model: keras.Model, dataset, batches: int = DEFAULT_BATCHES) -> int:
    """Reset the trainable BatchNorm layers of ``model``'s backbone and average their statistics over up to
    ``batches`` batches of ``dataset`` (``(pixels, labels)`` or pixels); weights are untouched. Returns the number
    of batches used (0: no BatchNorm trains, nothing changed)."""
    layers = _batchnorm_layers(model)
    if not layers:
        return 0
    net = backbone_layer(model).net
    preprocess = model.get_layer("preprocess")
    saved = [layer.momentum for layer in layers]
    for layer in layers:
        layer.moving_mean.assign(np.zeros(layer.moving_mean.shape, layer.moving_mean.dtype))
        layer.moving_variance.assign(np.ones(layer.moving_variance.shape, layer.moving_variance.dtype))
    used = 0
    try:
        for batch in dataset.take(batches):
            pixels = batch[0] if isinstance(batch, (tuple, list)) else batch
            used += 1
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / used  # a running mean: batch k weighs 1/k
            net(preprocess(pixels), training=True)
    finally:
        for layer, momentum in zip(layers, saved):
            layer.momentum = momentum
    return used


class PreciseBatchNorm(keras.callbacks.Callback):
    """Recompute the backbone's BatchNorm statistics (:func:`recompute_batchnorm`) before every evaluation
    (``on_test_begin``: each epoch's validation) and at the end of training, so validation numbers and the saved
    model use statistics of the final weights. ``model`` is the classifier (it may differ from the model ``fit``
    runs, e.g. a wrapper that adds a loss)."""

    def __init__(self, model: keras.Model, dataset, batches: int = DEFAULT_BATCHES):
        super().__init__()
        self.classifier = model
        self.dataset = dataset
        self.batches = int(batches)
        self.stale = True  # the weights changed since the statistics were last recomputed

    def on_epoch_begin(self, epoch, logs=None):
        self.stale = True

    def on_test_begin(self, logs=None):
        self._refresh()

    def on_train_end(self, logs=None):
        self._refresh()  # after a last validation nothing changed: no second pass

    def _refresh(self):
        if self.stale:
            recompute_batchnorm(self.classifier, self.dataset, self.batches)
            self.stale = False
