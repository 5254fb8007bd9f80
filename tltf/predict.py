"""Top-k predictions for image files with a ``.keras`` model or an exported ``.onnx`` file (``tltf predict``).

Images go through :mod:`tltf.runtime.images` (Pillow: the training pipeline's decoding and antialiased bilinear
resizing, without TensorFlow), and the model does its own normalisation, so both formats take raw RGB pixels.
Class names come from the model (the classifier head's config, or the ONNX file's metadata); without them labels
are ``None`` and indices remain. With an ``.onnx`` file nothing here imports TensorFlow: onnxruntime, numpy and
Pillow are all it needs.

**Bounded memory.** Every image's header is read first (:func:`tltf.runtime.images.check_image`) and an image
over :data:`MAX_IMAGE_PIXELS` (50 megapixels) or a file Pillow cannot identify is refused, naming the file,
before any model is loaded or any image decoded (measured before: ``tltf predict`` with MobileNetV2 on an
8000x6000 JPEG peaks 0.84 GB above start-up; decoding costs about 15.5 bytes per pixel). Batches hold at most
:data:`BATCH_BYTES` of pixels.

>>> predict_files("imported.keras", ["dog.jpg"], top=1)      # doctest: +SKIP
[{'file': 'dog.jpg', 'top': [{'index': 207, 'label': 'golden retriever', 'score': 0.93}]}]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tltf.errors import TltfError
from tltf.runtime.images import MAX_IMAGE_PIXELS, check_image  # noqa: F401  (tltf.predict.* as before)
from tltf.runtime.outputs import top_k

BATCH = 32
#: pixels of one batch at the model's input size (float32): fewer images per batch for large inputs
BATCH_BYTES = 256 << 20


class _KerasModel:
    """A ``.keras`` classifier behind the same small interface as ``tltf.runtime.onnx_model.OnnxModel``."""

    def __init__(self, path: Path):
        from tltf.extras import training_stack

        training_stack(f"{path}: a .keras model")
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
        from tltf.runtime.outputs import class_probabilities

        return class_probabilities(self.model.predict(pixels, batch_size=BATCH, verbose=0))


def _check_input_size(path, image_size) -> None:
    from tltf.runtime.onnx_model import MAX_INPUT_SIDE

    if max(image_size) > MAX_INPUT_SIDE:
        raise TltfError(f"{path}: input size {image_size[0]}x{image_size[1]} is larger than the "
                        f"{MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} tltf accepts")


def open_model(path: str | Path):
    """A model with ``.predict(pixels) -> (N, classes)`` probabilities, ``.class_names`` and ``.image_size``."""
    path = Path(path)
    if not path.is_file():
        raise TltfError(f"{path}: no such model file")
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _KerasModel(path)
    if suffix == ".onnx":
        from tltf.runtime.onnx_model import OnnxModel

        return OnnxModel(str(path))
    raise TltfError(f"{path}: unknown model format (expected .keras or .onnx)")


def predict_files(model_path: str | Path, files, top: int = 5) -> list[dict]:
    """``[{"file": PATH, "top": [{"index", "label", "score"}, …]}]`` for each image file, in order; for a multitask
    model ``{"file": PATH, "tasks": {task: [{"index", "label", "score"}, …]}}`` (indices within the task)."""
    from tltf.runtime.images import decode, resize

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
        pixels = np.stack([resize(decode(file), size) for file in chunk])  # headers were checked above
        probs = np.asarray(model.predict(pixels))
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
