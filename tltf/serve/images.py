"""Uploaded image files -> the pixels ``tltf predict`` would feed the model, or a 400 naming the upload.

Uploads go through exactly what ``tltf predict`` does with files on disk: :func:`tltf.predict.check_image` (the
header is read first: anything Pillow cannot identify, or larger than ``MAX_IMAGE_PIXELS``, is refused before it
is decoded) and :func:`tltf.data.images.load_image` (TensorFlow's decoding and antialiased bilinear resizing, as
in training). Both work on paths, so each upload is written to a private temporary folder first; messages name
the client's file name, never that folder. Runs in a worker thread: decoding is CPU work the event loop must not
wait on.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tltf.errors import TltfError
from tltf.serve.errors import ApiError


def decode_uploads(uploads: list[tuple[str, bytes]], image_size: tuple[int, int]) -> np.ndarray:
    """``(N, H, W, 3)`` float32 RGB pixels in ``[0, 255]`` for ``[(file name, bytes)]``; a file that is not a
    readable image (or too large a one) is a 400 :class:`ApiError` naming it."""
    from tltf.data.images import load_image
    from tltf.predict import check_image

    size = tuple(int(v) for v in image_size)
    pixels = []
    with tempfile.TemporaryDirectory(prefix="tltf-serve-") as folder:
        for i, (name, data) in enumerate(uploads):
            path = Path(folder) / f"upload-{i}"
            path.write_bytes(data)
            try:
                check_image(path)
                pixels.append(load_image(path, size))
            except TltfError as e:
                raise ApiError(400, str(e).replace(str(path), name)) from None
            finally:
                path.unlink(missing_ok=True)
    return np.stack(pixels).astype(np.float32, copy=False)
