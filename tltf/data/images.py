"""Decoding and resizing images: one implementation for training pipelines, ``predict`` and calibration.

Every tltf model takes float32 RGB pixels in ``[0, 255]`` (normalisation happens inside the model). Images are
decoded with TensorFlow (JPEG, PNG, GIF first frame, BMP), converted to 3 channels and resized bilinearly
(antialiased when shrinking) to the model's input size. JPEG uses libjpeg's accurate integer DCT rather than
TensorFlow's default fast one (which differs by up to 7 levels of 255 on real photos): it is what Pillow, and so
the TensorFlow-free runtime (:mod:`tltf.runtime.images`), decodes, pixel for pixel.

>>> pixels = load_images(["cat.jpg", "dog.png"], (224, 224))   # doctest: +SKIP
>>> pixels.shape, pixels.dtype                                 # doctest: +SKIP
((2, 224, 224, 3), dtype('float32'))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from tltf.errors import TltfError


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes -> uint8 ``(H, W, 3)`` (JPEG with the accurate DCT, see the module docstring)."""

    def jpeg():
        return tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE")

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return image

    image = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """Any ``(H, W, C)`` image (C = 1 or 3) -> float32 ``(size[0], size[1], 3)`` in ``[0, 255]``."""
    image = tf.convert_to_tensor(image)
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    image = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def load_image(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """One image file -> float32 ``(H, W, 3)``; an unreadable file is a one-line error naming it."""
    path = Path(path)
    try:
        return resize(decode(tf.io.read_file(str(path))), size).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError, ValueError) as e:
        reason = "no such file" if not path.exists() else "not a readable image"
        raise TltfError(f"{path}: {reason} ({type(e).__name__})") from None


def load_images(paths, size: tuple[int, int]) -> np.ndarray:
    """Image files -> float32 ``(N, H, W, 3)``."""
    return np.stack([load_image(p, size) for p in paths]) if paths else np.zeros((0, *size, 3), np.float32)
