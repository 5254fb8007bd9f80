"""Top-k predictions for image files with a ``.keras`` model or an exported ``.onnx`` file (``tltf predict``).

Images go through :func:`tltf.data.images.load_images` -- the same decoding and resizing as training -- and the
model does its own normalisation, so both formats take raw RGB pixels. Class names come from the model (the
classifier head's config, or the ONNX file's metadata); without them labels are ``None`` and indices remain.

**Bounded memory.** Decoding and resizing an image costs about 15.5 bytes per pixel (3 for the decoded uint8
image, 12 for its float32 copy): 48 megapixels take 0.75 GB, 100 megapixels 1.5 GB (measured: ``tltf predict``
with MobileNetV2 on an 8000x6000 JPEG peaks 0.84 GB above TensorFlow's start-up). So every image's header is
read first (Pillow reads the size without decoding) and an image over :data:`MAX_IMAGE_PIXELS` (50 megapixels,
e.g. 8660x5773 -- 48 MP phone photos pass) is refused, naming the file, before any model is loaded or any image
decoded; so is a file Pillow cannot identify. Pillow's own decompression-bomb protection stays on (it warns above
89.5 megapixels and refuses above 179): a **10,000 x 10,000** image (100 megapixels, 1.5 GB to decode) is refused
by this ceiling (Pillow alone would only warn); a 15,000 x 15,000 one (225 megapixels) is refused by both (an
animated GIF's first frame only is decoded, so its frames do not count). Batches hold at most :data:`BATCH_BYTES`
of pixels.

>>> predict_files("imported.keras", ["dog.jpg"], top=1)      # doctest: +SKIP
[{'file': 'dog.jpg', 'top': [{'index': 207, 'label': 'golden retriever', 'score': 0.93}]}]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tltf.errors import TltfError

BATCH = 32
#: the largest image (width x height) predict decodes; see the module docstring
MAX_IMAGE_PIXELS = 50_000_000
#: pixels of one batch at the model's input size (float32): fewer images per batch for large inputs
BATCH_BYTES = 256 << 20


class _KerasModel:
    """A ``.keras`` classifier behind the same small interface as ``tltf.export.runtime.OnnxModel``."""

    def __init__(self, path: Path):
        from tltf.models.classifier import class_names_of
        from tltf.models.loading import load_model

        self.model = load_model(path)
        shape = self.model.input_shape
        if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 3:
            raise TltfError(f"{path}: not an image classifier (input shape {shape})")
        self.image_size = (shape[1] or 224, shape[2] or 224)
        _check_input_size(path, self.image_size)
        try:
            self.class_names = class_names_of(self.model)
        except (ValueError, AttributeError):
            self.class_names = None
        from tltf.multitask.head import segments_of

        self.segments = segments_of(self.model)  # a multitask model: each task's columns

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        from tltf.models.head import class_probabilities

        return class_probabilities(self.model.predict(pixels, batch_size=BATCH, verbose=0))


def _check_input_size(path, image_size) -> None:
    from tltf.export.runtime import MAX_INPUT_SIDE

    if max(image_size) > MAX_INPUT_SIDE:
        raise TltfError(f"{path}: input size {image_size[0]}x{image_size[1]} is larger than the "
                        f"{MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} tltf accepts")


def check_image(path: str | Path) -> None:
    """Refuse, naming the file, what predict must not decode: a missing file, a file Pillow cannot identify, an
    image over :data:`MAX_IMAGE_PIXELS` (read from its header: nothing is decoded here)."""
    import re
    import warnings

    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise TltfError(f"{path}: {'no such file' if not path.exists() else 'not a readable image (not a file)'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with one line
        try:
            with Image.open(path) as im:
                width, height = im.size
        except Image.DecompressionBombError as e:  # over Pillow's own limit (2 x Image.MAX_IMAGE_PIXELS)
            found = re.search(r"\((\d+) pixels\)", str(e))
            pixels = f"{int(found.group(1)):,}-pixel" if found else "too large an"
            raise TltfError(f"{path}: refused: {pixels} image (a decompression bomb?) is larger than the "
                            f"{MAX_IMAGE_PIXELS:,} pixels tltf predict decodes") from None
        except Exception as e:  # UnidentifiedImageError, truncated headers, ...
            raise TltfError(f"{path}: not a readable image ({type(e).__name__})") from None
    pixels = width * height
    if pixels > MAX_IMAGE_PIXELS:
        raise TltfError(f"{path}: refused: a {width}x{height} image ({pixels:,} pixels) is larger than the "
                        f"{MAX_IMAGE_PIXELS:,} pixels tltf predict decodes (downscale it first)")


def open_model(path: str | Path):
    """A model with ``.predict(pixels) -> (N, classes)`` probabilities, ``.class_names`` and ``.image_size``."""
    path = Path(path)
    if not path.is_file():
        raise TltfError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _KerasModel(path)
    if suffix == ".onnx":
        try:
            from tltf.export.runtime import OnnxModel
        except ImportError:
            raise TltfError(f"{path}: ONNX models need tltf.export.runtime, which is not available") from None
        return OnnxModel(str(path))
    raise TltfError(f"{path}: unknown model format (expected .keras or .onnx)")


def top_k(probabilities: np.ndarray, class_names, k: int) -> list[list[dict]]:
    """Per row, the ``k`` best ``{"index", "label", "score"}`` in decreasing score (ties by lower index)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    k = max(1, min(int(k), probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    names = list(class_names) if class_names is not None else None
    if names is not None and len(names) != probs.shape[1]:
        names = None  # names that do not fit the output would mislabel: fall back to indices
    return [[{"index": int(i), "label": names[i] if names else None, "score": float(row[i])} for i in idx]
            for row, idx in zip(probs, order)]


def predict_files(model_path: str | Path, files, top: int = 5) -> list[dict]:
    """``[{"file": PATH, "top": [{"index", "label", "score"}, …]}]`` for each image file, in order; for a multitask
    model ``{"file": PATH, "tasks": {task: [{"index", "label", "score"}, …]}}`` (indices within the task)."""
    from tltf.data.images import load_images

    if top < 1:
        raise TltfError(f"--top {top}: must be at least 1")
    files = [str(f) for f in files]
    if not files:
        raise TltfError("IMAGE: no image files given")
    for file in files:  # every header before the model is loaded or anything decoded
        check_image(file)
    model = open_model(model_path)
    size = tuple(int(v) for v in model.image_size)
    batch = max(1, min(BATCH, BATCH_BYTES // (size[0] * size[1] * 3 * 4)))
    results = []
    for start in range(0, len(files), batch):
        chunk = files[start:start + batch]
        probs = np.asarray(model.predict(load_images(chunk, size)))
        if probs.ndim != 2 or probs.shape[0] != len(chunk) or probs.shape[1] < 1:
            raise TltfError(f"{model_path}: output of shape {probs.shape} for {len(chunk)} image(s) is not "
                            "(images, classes) probabilities")
        segments = getattr(model, "segments", None)
        if segments:
            per_task = {name: top_k(probs[:, start:stop], classes, top) for name, start, stop, classes in segments}
            results += [{"file": file, "tasks": {name: best[i] for name, best in per_task.items()}}
                        for i, file in enumerate(chunk)]
            continue
        for file, best in zip(chunk, top_k(probs, model.class_names, top)):
            results.append({"file": file, "top": best})
    return results
