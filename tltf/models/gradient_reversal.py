"""The gradient-reversal layer of domain-adversarial training (Ganin et al., arXiv 1505.07818).

Forward it is the identity; backward it multiplies the incoming gradient by ``-lambda``. Placed between a feature
extractor and a domain classifier, it lets one optimiser step *minimise* the domain loss with respect to the domain
classifier and *maximise* it with respect to the features.

``lambda`` is a non-trainable float32 variable of the layer: a callback (:class:`tltf.adapt.LambdaScheduler`)
assigns it during training, and it is saved and restored with the model like any weight. The reversal is a
``keras.ops.custom_gradient`` (``tf.custom_gradient`` under the TensorFlow backend), so it runs eagerly, inside
``tf.function``, under XLA (``jit_compile=True``) and under the ``mixed_float16`` policy (the gradient is scaled in
its own dtype).

>>> import numpy as np
>>> grl = GradientReversal(lambda_=0.5)
>>> grl(np.ones((1, 2), "float32")).numpy().tolist()
[[1.0, 1.0]]
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="tltf")
class GradientReversal(keras.layers.Layer):
    """Identity forward, ``-lambda * upstream`` backward; ``lambda_`` is the initial value of the variable."""

    def __init__(self, lambda_: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_lambda = float(lambda_)
        self.supports_masking = True
        self.lambda_var = None

    def build(self, input_shape):
        # float32 whatever the policy, never autocast: it is a schedule value, not a weight of the computation.
        self.lambda_var = self.add_weight(name="lambda", shape=(), dtype="float32", trainable=False,
                                          initializer=keras.initializers.Constant(self.initial_lambda),
                                          autocast=False)
        self.built = True

    @property
    def lambda_(self) -> float:
        """The current lambda (a Python float)."""
        return float(ops.convert_to_numpy(self.lambda_var)) if self.lambda_var is not None else self.initial_lambda

    def set_lambda(self, value: float) -> None:
        """Assign lambda (builds nothing; call after the layer is built)."""
        if self.lambda_var is None:
            self.initial_lambda = float(value)
        else:
            self.lambda_var.assign(float(value))

    def call(self, inputs):
        lam = ops.convert_to_tensor(self.lambda_var)  # read once; captured by the gradient function

        @ops.custom_gradient
        def reverse(x):
            def grad(*args, upstream=None):
                if upstream is None:  # TensorFlow passes the upstream gradient positionally
                    (upstream,) = args
                return ops.multiply(upstream, ops.cast(ops.negative(lam), upstream.dtype))

            return ops.copy(x), grad

        return reverse(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(lambda_=self.lambda_)  # the current value; the saved weight restores it too
        return config


def reversal_layers(model) -> list[GradientReversal]:
    """Every :class:`GradientReversal` layer inside ``model`` (nested models included)."""
    return [layer for layer in model._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, GradientReversal)]


def set_lambda(model, value: float) -> int:
    """Set lambda on every reversal layer of ``model``; returns how many layers were set."""
    layers = reversal_layers(model)
    for layer in layers:
        layer.set_lambda(value)
    return len(layers)
