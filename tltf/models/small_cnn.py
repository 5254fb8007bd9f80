"""``cnn_small``: the digit-sized CNN of the DANN paper's MNIST experiments, as a headless backbone.

Ganin et al. (arXiv 1505.07818, MNIST -> MNIST-M) extract features with ``conv 5x5 32 -> max-pool 2 -> conv 5x5 48
-> max-pool 2`` and classify them with small fully connected layers. :func:`small_cnn` builds that feature extractor
with the calling convention of the ``keras.applications`` constructors, so the backbone registry can list it next to
MobileNetV2 (always trained from scratch: there are no pretrained weights). By default it ends with a flatten and a
100-unit dense layer (``block3``), so the features are a vector and tltf's :class:`ClassifierHead` needs no pooling;
``top_units=0`` keeps the paper's 4-D conv features instead.

Layers are named ``block1_conv``, ``block1_pool``, ``block2_conv``, ``block2_pool``, ``block3_flatten``,
``block3_dense``: the registry's block rule ``^block(\\d+)_`` groups them into ``block1 .. block3``.

>>> net = small_cnn(input_shape=(28, 28, 3))
>>> net.output_shape
(None, 100)
"""

from __future__ import annotations

import keras

from tltf.errors import TltfError


def small_cnn(include_top: bool = False, weights=None, input_shape=(28, 28, 3), name: str = "cnn_small",
              top_units: int = 100, input_tensor=None, pooling=None, batchnorm: bool = False,
              **kwargs) -> keras.Model:
    """The headless digit CNN; ``weights`` must be ``None`` (or ``"none"``): it is always trained from scratch.

    ``include_top`` must be False (tltf adds its own head). With ``top_units=0``, ``pooling`` shapes the conv
    features as in ``keras.applications`` (``"avg"``/``"max"``), or ``"flatten"`` (the paper's 768 features).
    ``batchnorm=True`` (the ``cnn_small_bn`` backbone) puts a BatchNormalization before each ReLU (conv and dense
    layers lose their bias): the digit-sized testbed for what depends on BatchNorm, e.g. ``--adapt adabn``.
    """
    if weights not in (None, "none"):
        raise TltfError(f"--weights {weights}: cnn_small has no pretrained weights; use --weights none")
    if include_top:
        raise TltfError("cnn_small: include_top=True is not supported (tltf adds its own head)")
    if kwargs:
        raise TltfError(f"cnn_small: unknown option {sorted(kwargs)[0]!r}")
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else (28, 28, 3)
    if min(shape[:2]) < 16:
        raise TltfError(f"--image-size {shape[0]}x{shape[1]} is too small for cnn_small (minimum 16)")
    inputs = input_tensor if input_tensor is not None else keras.Input(shape, name="input_layer")

    def unit(layer_class, x, block, *args):
        """``layer -> ReLU``, or ``layer (no bias) -> BatchNorm -> ReLU``; named ``{block}_conv``/``_dense``..."""
        kind = "conv" if layer_class is keras.layers.Conv2D else "dense"
        if not batchnorm:
            return layer_class(*args, activation="relu", name=f"{block}_{kind}")(x)
        x = layer_class(*args, use_bias=False, name=f"{block}_{kind}")(x)
        x = keras.layers.BatchNormalization(name=f"{block}_bn")(x)
        return keras.layers.ReLU(name=f"{block}_relu")(x)

    x = unit(keras.layers.Conv2D, inputs, "block1", 32, 5)
    x = keras.layers.MaxPooling2D(2, name="block1_pool")(x)
    x = unit(keras.layers.Conv2D, x, "block2", 48, 5)
    x = keras.layers.MaxPooling2D(2, name="block2_pool")(x)
    if top_units:
        x = keras.layers.Flatten(name="block3_flatten")(x)
        x = unit(keras.layers.Dense, x, "block3", int(top_units))
    elif pooling == "flatten":
        x = keras.layers.Flatten(name="block2_flatten")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="block3_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="block3_pool")(x)
    return keras.Model(inputs, x, name=name)
