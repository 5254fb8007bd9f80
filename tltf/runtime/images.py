"""Image files and uploads -> the pixels a tltf model takes, with Pillow and numpy only (no TensorFlow).

Every tltf model takes float32 RGB pixels in ``[0, 255]``, ``(N, H, W, 3)``; normalisation happens inside the
model. This is the inference side's decoder (``tltf predict``, ``tltf serve``, ``tltf drift`` on an ``.onnx``),
built to give what the training pipeline (:mod:`tltf.data.images`, TensorFlow) gives:

- **decoding**: JPEG with libjpeg's accurate integer DCT and fancy upsampling (what the training pipeline asks
  TensorFlow for: pixel-identical on the 20 ImageNet photos of the foolbox wheel), PNG, BMP and a GIF's first
  frame; any mode becomes 3 channels as TensorFlow's ``channels=3`` does (grey replicated, alpha dropped, a
  palette expanded, 16-bit samples scaled to 8). EXIF orientation is not applied (TensorFlow ignores it too).
- **resizing**: bilinear, antialiased when shrinking -- Pillow's ``BILINEAR`` filter on float32 planes (mode
  ``F``: no rounding between the horizontal and vertical passes) is the triangle kernel, widened by the scale
  when shrinking, with half-pixel centres, that ``tf.image.resize(..., antialias=True)`` computes. Measured on
  those 20 photos at 224x224, 96x96 and 500x300: at most 0.006 of 255 from TensorFlow's pixels.

**Bounded memory.** Decoding and resizing costs about 15.5 bytes per pixel (3 for the decoded uint8 image, 12
for a float32 plane copy): so an image's header is read first (:func:`check_image`: Pillow reads the size
without decoding) and an image over :data:`MAX_IMAGE_PIXELS` (50 megapixels, e.g. 8660x5773 -- 48 MP phone
photos pass) is refused, naming the file, before anything is decoded; so is a file Pillow cannot identify.
Pillow's own decompression-bomb protection stays on (it warns above 89.5 megapixels and refuses above 179): a
10,000 x 10,000 image is refused by this ceiling (Pillow alone would only warn), a 15,000 x 15,000 one by both.

>>> pixels = load_images(["cat.jpg", "dog.png"], (224, 224))   # doctest: +SKIP
>>> pixels.shape, pixels.dtype                                 # doctest: +SKIP
((2, 224, 224, 3), dtype('float32'))
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import numpy as np

from tltf.errors import TltfError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
#: the largest image (width x height) tltf decodes; see the module docstring
MAX_IMAGE_PIXELS = 50_000_000


def is_image_file(path: Path) -> bool:
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _open(source: str | Path | bytes):
    from PIL import Image

    return Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source)


def check_image(source: str | Path | bytes, name: str | None = None) -> tuple[int, int]:
    """``(width, height)`` of an image file (or its bytes), read from its header -- nothing is decoded. A
    missing file, a file Pillow cannot identify, or an image over :data:`MAX_IMAGE_PIXELS` is a one-line
    :class:`TltfError` naming ``name`` (default: the path)."""
    from PIL import Image

    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    name = name or ("image" if is_bytes else str(source))
    if not is_bytes:
        path = Path(source)
        if not path.is_file():
            raise TltfError(f"{name}: {'no such file' if not path.exists() else 'not a readable image (not a file)'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with one line
        try:
            with _open(source) as im:
                width, height = im.size
        except Image.DecompressionBombError as e:  # over Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS)
            found = re.search(r"\((\d+) pixels\)", str(e))
            pixels = f"{int(found.group(1)):,}-pixel" if found else "too large an"
            raise TltfError(f"{name}: refused: {pixels} image (a decompression bomb?) is larger than the "
                            f"{MAX_IMAGE_PIXELS:,} pixels tltf decodes") from None
        except Exception as e:  # UnidentifiedImageError, truncated headers, ...
            raise TltfError(f"{name}: not a readable image ({type(e).__name__})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise TltfError(f"{name}: refused: a {width}x{height} image ({width * height:,} pixels) is larger than the "
                        f"{MAX_IMAGE_PIXELS:,} pixels tltf decodes (downscale it first)")
    return width, height


def decode(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """An image file (or its bytes) -> uint8 ``(H, W, 3)``, as the training pipeline decodes it (see the module
    docstring); call :func:`check_image` first for the size ceiling. An unreadable image is a one-line
    :class:`TltfError` naming ``name``."""
    from PIL import Image

    name = name or ("image" if isinstance(source, (bytes, bytearray, memoryview)) else str(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # check_image keeps the ceiling
            with _open(source) as im:
                im.seek(0)  # an animated image: its first frame
                if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey: scaled to 8 bits, as TensorFlow does
                    grey = np.asarray(im, dtype=np.uint32) if im.mode == "I" else np.asarray(im).astype(np.uint32)
                    grey = np.clip(grey, 0, 65535) >> 8  # noqa: PLR2004
                    return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2)
                if im.mode == "RGBA":  # alpha dropped, not composited (TensorFlow's channels=3)
                    return np.ascontiguousarray(np.asarray(im)[..., :3])
                if im.mode == "LA":
                    return np.repeat(np.asarray(im)[..., :1], 3, axis=2)
                return np.asarray(im.convert("RGB"))
    except TltfError:
        raise
    except Exception as e:  # truncated data, unsupported codec, OSError from a decoder ...
        raise TltfError(f"{name}: not a readable image ({type(e).__name__})") from None


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Any ``(H, W, C)`` image (C = 1 or 3, any numeric dtype) -> float32 ``(size[0], size[1], 3)`` in
    ``[0, 255]``: bilinear, antialiased when shrinking (TensorFlow's ``resize(..., antialias=True)``)."""
    from PIL import Image

    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=2)
    h, w = int(size[0]), int(size[1])
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32), "F")
                         .resize((w, h), Image.BILINEAR)) for c in range(3)]
    return np.clip(np.stack(planes, axis=-1), 0.0, 255.0)


def load_image(source: str | Path | bytes, size: tuple[int, int], name: str | None = None) -> np.ndarray:
    """One image file (or its bytes) -> float32 ``(H, W, 3)``, checked (:func:`check_image`), decoded and
    resized; a missing, unreadable or oversized image is a one-line :class:`TltfError` naming it."""
    check_image(source, name)
    return resize(decode(source, name), size)


def load_images(paths, size: tuple[int, int]) -> np.ndarray:
    """Image files -> float32 ``(N, H, W, 3)``."""
    paths = list(paths)
    if not paths:
        return np.zeros((0, int(size[0]), int(size[1]), 3), np.float32)
    return np.stack([load_image(p, size) for p in paths])
