"""Per-layer-group (discriminative) learning rates for any Keras optimizer.

Keras has no per-variable learning rate, and scaling gradients does not emulate one under Adam (Adam divides the
scale away). The mixin below scales the *learning rate* passed to ``update_step`` for each variable, so the size of
the applied update scales, whatever the optimizer.

>>> opt = make_optimizer("adam", 1e-3)
>>> opt.build(model.trainable_variables)                   # doctest: +SKIP
>>> opt.set_lr_multipliers({"dense/kernel": 0.1})          # doctest: +SKIP
"""

from __future__ import annotations

import keras

from tltf.errors import TltfError


class LayerwiseLRMixin:
    """Multiply the learning rate of each variable by ``lr_multipliers[variable.path]`` (default 1)."""

    def set_lr_multipliers(self, multipliers: dict[str, float]) -> None:
        """Set the multipliers (by variable path) of a built optimizer; retrace the train function afterwards."""
        self._lr_multipliers = dict(multipliers)
        # update_step sees backend variables (tf.Variable under TensorFlow), which have no Keras path.
        self._lr_by_key = {self._var_key(v): self._lr_multipliers.get(v.path, 1.0) for v in self._trainable_variables}

    @property
    def lr_multipliers(self) -> dict[str, float]:
        return getattr(self, "_lr_multipliers", {})

    def update_step(self, gradient, variable, learning_rate):
        scale = getattr(self, "_lr_by_key", {}).get(self._var_key(variable), 1.0)
        if scale != 1.0:
            learning_rate = learning_rate * scale
        return super().update_step(gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="tltf")
class Adam(LayerwiseLRMixin, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with per-layer-group learning rates."""


@keras.saving.register_keras_serializable(package="tltf")
class AdamW(LayerwiseLRMixin, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with per-layer-group learning rates."""


@keras.saving.register_keras_serializable(package="tltf")
class SGD(LayerwiseLRMixin, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` (momentum 0.9) with per-layer-group learning rates."""


OPTIMIZERS = {"adam": Adam, "adamw": AdamW, "sgd": SGD}


def make_optimizer(name: str, learning_rate: float, clipnorm: float | None = None):
    key = name.lower()
    if key not in OPTIMIZERS:
        raise TltfError(f"--optimizer {name}: unknown (choose from {', '.join(OPTIMIZERS)})")
    kwargs = {"learning_rate": learning_rate}
    if clipnorm:
        kwargs["clipnorm"] = clipnorm
    if key == "sgd":
        kwargs["momentum"] = 0.9
    return OPTIMIZERS[key](**kwargs)
