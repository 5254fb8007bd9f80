"""The backbone inside a tltf classifier, with BatchNorm kept in inference mode.

Keras 3's ``Functional.call`` injects the caller's ``training`` flag into every sub-layer, overriding a
``training=False`` recorded when the graph was built: ``x = base_model(x, training=False)`` (the Keras guide's
advice) does *not* keep BatchNorm in inference mode inside ``fit``. :class:`Backbone` wraps the headless network
and calls it with ``training=False`` itself (unless ``bn_inference=False``), so moving statistics never move and
dropout-like layers inside the backbone stay off.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tltf")
class Backbone(keras.layers.Layer):
    """Call ``net`` in inference mode (``bn_inference=True``) or with the caller's ``training`` flag."""

    def __init__(self, net: keras.Model, bn_inference: bool = True, **kwargs):
        kwargs.setdefault("name", f"{net.name}_backbone")
        super().__init__(**kwargs)
        self.net = net
        self.bn_inference = bool(bn_inference)

    def build(self, input_shape):
        if not self.net.built:
            self.net.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.net(inputs, training=False if self.bn_inference else training)

    def compute_output_shape(self, input_shape):
        return self.net.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(net=keras.saving.serialize_keras_object(self.net), bn_inference=self.bn_inference)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["net"] = keras.saving.deserialize_keras_object(config["net"])
        return cls(**config)
