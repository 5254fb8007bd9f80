"""Conservative training by output distillation, as in Learning without Forgetting (Li & Hoiem, 2016): keep what
the source model says about the target images close to what it said before fine-tuning.

The source model is the pretrained backbone with its own classifier (the 1000 ImageNet classes of an imported
torchvision model, or the head of any tltf ``.keras`` classifier given as ``--weights``). Every training step adds

    weight * T^2 * KL( softmax(z_old / T) || softmax(z_new / T) )      (mean over the batch, T = 2 by default)

where ``z_old`` are the source head's logits on the *original* backbone's features of the step's (augmented)
images and ``z_new`` the same head's logits on the current backbone's features. ``z_old`` is computed on the fly
by a frozen copy of the starting backbone, rather than recorded once before training, so that it matches the
augmented images the step actually sees (without augmentation the two are the same). The source head is fixed
(not trained) and neither it nor the copy is part of the saved model: training runs on a wrapper model that
shares the classifier's layers and inserts :class:`LearningWithoutForgetting` between backbone and head.

``T^2`` keeps the gradient scale independent of ``T`` (Hinton et al.). Weights without a source head
(``imagenet`` from Keras without its top, ``none``, a bare ``.h5``) are refused with a one-line error.
"""

from __future__ import annotations

import types
from pathlib import Path

import keras
import numpy as np

from tltf.errors import TltfError
from tltf.training.methods import Method


def source_head(weights: str) -> tuple[np.ndarray, np.ndarray]:
    """The source classifier's ``(kernel (C, K), bias (K,))`` logits layer for ``--weights weights``."""
    from tltf.weights import pretrained

    path = None
    if pretrained.is_named(weights):
        path = pretrained.resolve(weights)
    elif str(weights).endswith(".keras") and Path(weights).exists():
        path = Path(weights)
    if path is None:
        raise TltfError(f"--lwf needs the source model's classifier head, and --weights {weights} has none: use "
                        "--weights torchvision:mobilenet_v2 or a tltf .keras classifier")
    from tltf.models.loading import load_model
    from tltf.models.classifier import head_of

    try:
        dense = head_of(load_model(path)).dense
    except (ValueError, AttributeError):
        raise TltfError(f"--lwf: --weights {weights} ({path.name}) is not a tltf classifier with a head") from None
    kernel = np.asarray(keras.ops.convert_to_numpy(dense.kernel), np.float32)
    bias = np.asarray(keras.ops.convert_to_numpy(dense.bias), np.float32)
    if kernel.shape[1] == 1:  # a sigmoid unit: logits [0, z] give the same two probabilities under softmax
        kernel = np.concatenate([np.zeros_like(kernel), kernel], axis=1)
        bias = np.concatenate([np.zeros_like(bias), bias])
    return kernel, bias


class LearningWithoutForgetting(keras.layers.Layer):
    """Pass the backbone features through; while training, add the LwF distillation loss (see the module).

    Called as ``layer([preprocessed_pixels, features])``. The frozen teacher backbone is held outside Keras'
    tracking, so stage changes never unfreeze it and checkpoints never hold it.
    """

    passes_features = True  # it sits between backbone and head: a DANN graph reads the features after it

    def __init__(self, teacher: keras.Model, kernel, bias, weight: float, temperature: float = 2.0, **kwargs):
        kwargs.setdefault("name", "lwf")
        super().__init__(**kwargs)
        self._fixed = types.SimpleNamespace(teacher=teacher, kernel=keras.ops.convert_to_tensor(kernel),
                                            bias=keras.ops.convert_to_tensor(bias))
        self.weight = float(weight)
        self.temperature = float(temperature)

    def _logits(self, features):
        pooled = keras.ops.mean(keras.ops.cast(features, "float32"), axis=(1, 2)) if len(features.shape) == 4 \
            else keras.ops.cast(features, "float32")
        width = self._fixed.kernel.shape[0]  # multi-level features end with the final ones the source head reads
        if pooled.shape[-1] != width:
            pooled = pooled[:, -width:]
        return keras.ops.matmul(pooled, self._fixed.kernel) + self._fixed.bias

    def distillation_loss(self, pixels, features):
        t = self.temperature
        old = keras.ops.stop_gradient(self._logits(self._fixed.teacher(pixels, training=False)))
        p_old = keras.ops.softmax(old / t, axis=-1)
        log_p_old = keras.ops.log_softmax(old / t, axis=-1)
        log_p_new = keras.ops.log_softmax(self._logits(features) / t, axis=-1)
        kl = keras.ops.sum(p_old * (log_p_old - log_p_new), axis=-1)
        return self.weight * t * t * keras.ops.mean(kl)

    def call(self, inputs, training=None):
        pixels, features = inputs
        if training:
            self.add_loss(self.distillation_loss(pixels, features))
        return features

    def compute_output_shape(self, input_shapes):
        return input_shapes[1]


def lwf_training_model(model: keras.Model, weights: str, weight: float, temperature: float = 2.0) -> keras.Model:
    """The model to train for ``--lwf weight``: ``model``'s own layers with :class:`LearningWithoutForgetting`
    between backbone and head, the teacher a frozen copy of the backbone as it is now (call before training)."""
    from tltf.models.classifier import PREPROCESS_NAME, backbone_layer, backbone_of, head_of

    if weight <= 0:
        raise TltfError(f"--lwf {weight}: must be > 0")
    if temperature <= 0:
        raise TltfError(f"--lwf-temperature {temperature}: must be > 0")
    kernel, bias = source_head(weights)
    net = backbone_of(model)
    width = int(net.output_shape[-1])
    if kernel.shape[0] != width:
        raise TltfError(f"--lwf: the source head of --weights {weights} takes {kernel.shape[0]} features, the "
                        f"backbone gives {width}")
    teacher = keras.models.clone_model(net)
    teacher.set_weights(net.get_weights())
    teacher.trainable = False
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    pixels = model.get_layer(PREPROCESS_NAME)(inputs)
    features = backbone_layer(model)(pixels)
    features = LearningWithoutForgetting(teacher, kernel, bias, weight, temperature)([pixels, features])
    return keras.Model(inputs, head_of(model)(features), name=f"{model.name}_lwf")


class LwF(Method):
    """``--lwf WEIGHT`` as an engine plug-in: the teacher is copied at ``start`` (before ``--reinit-top``), the
    fitted model becomes the LwF wrapper at ``setup``; an adaptation trainer (``--adapt``) builds its graph over
    that wrapper, so the distillation term joins its loss."""

    name = "lwf"

    @classmethod
    def wanted(cls, config) -> bool:
        return bool(config.lwf)

    def check(self, config) -> None:
        if config.lwf < 0:
            raise TltfError(f"--lwf {config.lwf}: must be >= 0")

    def start(self, run) -> None:
        self.train_model = lwf_training_model(run.model, self.config.weights, self.config.lwf,
                                              self.config.lwf_temperature)

    def setup(self, run) -> None:
        if not run.transfer.backbone_trains:
            print("note: --lwf has no effect: no stage trains the backbone", flush=True)
            return
        run.train_model = self.train_model
