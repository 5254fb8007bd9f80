"""Digit images in MNIST's framing: grey digits as RGB, and 8x8 UCI digits put into MNIST's 28x28 frame.

MNIST digits sit in a 20x20 box centred in a 28x28 frame; :func:`uci_to_mnist_frame` upsamples each 8x8 UCI digit
(which fills its whole frame) to 20x20 and pads it by 4 pixels, so the two sets differ in stroke style, thickness
and blur, not in framing. ``builtin:uci_digits`` (:mod:`tltf.data.builtin`) and the MNIST -> UCI domain pair of
:mod:`tltf.adapt.digits` both use it.
"""

from __future__ import annotations

import numpy as np


def to_rgb(x: np.ndarray) -> np.ndarray:
    """Grey ``(N, H, W)`` or ``(N, H, W, 1)`` images -> float32 ``(N, H, W, 3)`` (values unchanged)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 3:
        x = x[..., None]
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def uci_to_mnist_frame(x8: np.ndarray, size: int = 28, box: int = 20) -> np.ndarray:
    """8x8 digits (uint8 0..255) -> ``size`` x ``size`` grey float32: bilinear to ``box``, then centred padding."""
    import tensorflow as tf

    x = tf.convert_to_tensor(np.asarray(x8, dtype=np.float32)[..., None])
    x = tf.image.resize(x, (box, box), method="bilinear").numpy()
    pad = (size - box) // 2
    x = np.pad(x[..., 0], ((0, 0), (pad, size - box - pad), (pad, size - box - pad)))
    return np.clip(x, 0.0, 255.0).astype(np.float32)
