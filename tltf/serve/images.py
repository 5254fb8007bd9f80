"""Uploaded image files -> the pixels ``tltf predict`` would feed the model, or a 400 naming the upload.

Uploads go through exactly what ``tltf predict`` does with files on disk, straight from their bytes (no temporary
file): :func:`tltf.runtime.images.check_image` (the header is read first: anything Pillow cannot identify, or
larger than ``MAX_IMAGE_PIXELS``, is refused before it is decoded), then decoding and antialiased bilinear
resizing as in training (:mod:`tltf.runtime.images`; Pillow, no TensorFlow). Messages name the client's file
name. Runs in a worker thread: decoding is CPU work the event loop must not wait on.
"""

from __future__ import annotations

import numpy as np

from tltf.errors import TltfError
from tltf.serve.errors import ApiError


def decode_uploads(uploads: list[tuple[str, bytes]], image_size: tuple[int, int]) -> np.ndarray:
    """``(N, H, W, 3)`` float32 RGB pixels in ``[0, 255]`` for ``[(file name, bytes)]``; a file that is not a
    readable image (or too large a one) is a 400 :class:`ApiError` naming it."""
    from tltf.runtime.images import load_image

    size = tuple(int(v) for v in image_size)
    pixels = []
    for name, data in uploads:
        try:
            pixels.append(load_image(bytes(data), size, name=name))
        except TltfError as e:
            raise ApiError(400, str(e)) from None
    return np.stack(pixels).astype(np.float32, copy=False)
