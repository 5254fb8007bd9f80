"""The backbone's input normalisation as a serialisable layer, so every tltf model takes raw RGB pixels.

Keeping preprocessing inside the model means the ``.keras`` file, the exported ONNX graph, ``tltf predict`` and
``tltf bench`` all consume the same thing: float32 RGB pixels in ``[0, 255]``, shape ``(batch, H, W, 3)``.

Modes follow ``keras.applications.imagenet_utils.preprocess_input``:

- ``"tf"``: scale to ``[-1, 1]`` (MobileNet, MobileNetV2, Inception, Xception, NASNet, ResNetV2).
- ``"torch"``: ``(x/255 - mean) / std`` with ImageNet mean/std (DenseNet, torchvision-imported weights).
- ``"caffe"``: RGB->BGR and subtract the ImageNet BGR mean (ResNet v1, VGG).
- ``"none"``: the backbone normalises inside itself (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3).

>>> import numpy as np
>>> Preprocess("tf")(np.array([[[[0.0, 127.5, 255.0]]]], "float32")).numpy().round(3).tolist()
[[[[-1.0, 0.0, 1.0]]]]
"""

from __future__ import annotations

import keras
from keras import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
MODES = ("tf", "torch", "caffe", "none")


@keras.saving.register_keras_serializable(package="tltf")
class Preprocess(keras.layers.Layer):
    """Map raw RGB pixels in [0, 255] to what a backbone expects (see module docstring for modes)."""

    def __init__(self, mode: str = "tf", mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"Preprocess mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if mode == "torch" else None)
        self.std = tuple(std) if std is not None else (IMAGENET_STD if mode == "torch" else None)

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = ops.convert_to_tensor(self.mean, dtype=self.compute_dtype)
            std = ops.convert_to_tensor(self.std, dtype=self.compute_dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=self.compute_dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, mean=list(self.mean) if self.mean else None,
                      std=list(self.std) if self.std else None)
        return config
