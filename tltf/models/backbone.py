"""The backbone inside a tltf classifier, with BatchNorm kept in inference mode.

Keras 3's ``Functional.call`` injects the caller's ``training`` flag into every sub-layer, overriding a
``training=False`` recorded when the graph was built: ``x = base_model(x, training=False)`` (the Keras guide's
advice) does *not* keep BatchNorm in inference mode inside ``fit``. :class:`Backbone` wraps the headless network
and calls it with ``training=False`` itself (unless ``bn_inference=False``), so moving statistics never move and
dropout-like layers inside the backbone stay off.

With ``taps`` (layer names inside the network) the wrapper returns multi-level features: the global average of
each tapped layer's output and of the network's own output, concatenated into one vector (the final features
last). Intermediate layers are less specific to the pretraining task (Yosinski et al. 2014): on small data far
from ImageNet they carry what the last layer lost (measured in ``tltf.models.classifier.multilevel_taps``).
"""

from __future__ import annotations

import types

import keras


@keras.saving.register_keras_serializable(package="tltf")
class Backbone(keras.layers.Layer):
    """Call ``net`` in inference mode (``bn_inference=True``) or with the caller's ``training`` flag."""

    def __init__(self, net: keras.Model, bn_inference: bool = True, taps=(), **kwargs):
        kwargs.setdefault("name", f"{net.name}_backbone")
        super().__init__(**kwargs)
        self.net = net
        self.bn_inference = bool(bn_inference)
        self.taps = tuple(str(t) for t in taps)
        tapped = None
        if self.taps:  # shares net's layers and variables; held outside Keras' tracking so nothing counts twice
            outputs = [net.get_layer(name).output for name in self.taps] + [net.output]
            tapped = keras.Model(net.inputs, outputs, name=f"{net.name}_taps")
        self._fixed = types.SimpleNamespace(tapped=tapped)

    @property
    def tapped(self) -> keras.Model | None:
        """The network with the tapped layers as extra outputs (None without taps)."""
        return self._fixed.tapped

    def build(self, input_shape):
        if not self.net.built:
            self.net.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        training = False if self.bn_inference else training
        if not self.taps:
            return self.net(inputs, training=training)
        pooled = [keras.ops.mean(x, axis=(1, 2)) if len(x.shape) == 4 else x
                  for x in self._fixed.tapped(inputs, training=training)]
        return keras.ops.concatenate(pooled, axis=-1)

    def compute_output_shape(self, input_shape):
        if not self.taps:
            return self.net.compute_output_shape(input_shape)
        return (input_shape[0], self.width)

    @property
    def width(self) -> int:
        """Channels of the output (the sum over the taps and the final features with taps)."""
        shapes = [self.net.get_layer(name).output.shape for name in self.taps] + [self.net.output.shape]
        return int(sum(shape[-1] for shape in shapes)) if self.taps else int(self.net.output.shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update(net=keras.saving.serialize_keras_object(self.net), bn_inference=self.bn_inference,
                      taps=list(self.taps))
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["net"] = keras.saving.deserialize_keras_object(config["net"])
        return cls(**config)
