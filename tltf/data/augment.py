"""Training-time augmentation as tf ops in the input pipeline (never inside the exported model).

Random augmentation layers inside a Keras model end up in the exported graph (and make the ONNX file unloadable),
so tltf augments in tf.data: random resized crop, horizontal flip, colour jitter.

>>> aug = Augment.parse("flip,crop")
>>> aug.flip, aug.crop, aug.color
(True, True, False)
"""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from tltf.errors import TltfError

KINDS = ("flip", "crop", "color")


@dataclass(frozen=True)
class Augment:
    flip: bool = True
    crop: bool = True
    color: bool = True
    crop_scale: tuple[float, float] = (0.6, 1.0)

    @classmethod
    def parse(cls, text: str | None) -> "Augment":
        """``"flip,crop,color"``, any subset, or ``"none"``."""
        if text is None or text.strip().lower() in ("", "none", "false", "off"):
            return cls(False, False, False)
        parts = [p.strip().lower() for p in text.split(",") if p.strip()]
        bad = [p for p in parts if p not in KINDS]
        if bad:
            raise TltfError(f"--augment {text}: unknown augmentation {bad[0]!r} (choose from {', '.join(KINDS)})")
        return cls(flip="flip" in parts, crop="crop" in parts, color="color" in parts)

    @property
    def enabled(self) -> bool:
        return self.flip or self.crop or self.color

    def __call__(self, image: tf.Tensor, seed: tf.Tensor | None = None) -> tf.Tensor:
        """float32 ``(H, W, 3)`` in [0, 255] -> augmented, same shape and range. ``seed``: a shape-``(2,)`` integer
        tensor for reproducible draws (tf's stateless ops; the same seed, the same augmentation), else tf's
        stateful random ops."""
        size = tf.shape(image)[:2]
        seeds = tf.random.experimental.stateless_split(seed, 5) if seed is not None else None

        def draw(stateful, stateless, *args, step: int, **kwargs):
            if seed is None:
                return stateful(*args, **kwargs)
            return stateless(*args, seed=seeds[step], **kwargs)

        if self.crop:
            begin, crop_size, _ = draw(
                tf.image.sample_distorted_bounding_box, tf.image.stateless_sample_distorted_bounding_box,
                tf.concat([size, [3]], 0), tf.zeros([1, 0, 4]), step=0, min_object_covered=0.0,
                aspect_ratio_range=(3 / 4, 4 / 3), area_range=self.crop_scale, max_attempts=10,
                use_image_if_no_bounding_boxes=True)
            image = tf.slice(image, begin, crop_size)
            image = tf.image.resize(image, size, method="bilinear")
        if self.flip:
            image = draw(tf.image.random_flip_left_right, tf.image.stateless_random_flip_left_right, image, step=1)
        if self.color:
            image = draw(tf.image.random_brightness, tf.image.stateless_random_brightness, image, 0.1 * 255.0,
                         step=2)
            image = draw(tf.image.random_contrast, tf.image.stateless_random_contrast, image, 0.8, 1.2, step=3)
            image = draw(tf.image.random_saturation, tf.image.stateless_random_saturation, image, 0.8, 1.2,
                         step=4)
        return tf.clip_by_value(image, 0.0, 255.0)
