"""Top-k predictions for image files with a ``.keras`` model or an exported ``.onnx`` file (``tltf predict``).

Images go through :func:`tltf.data.images.load_images` -- the same decoding and resizing as training -- and the
model does its own normalisation, so both formats take raw RGB pixels. Class names come from the model (the
classifier head's config, or the ONNX file's metadata); without them labels are ``None`` and indices remain.

>>> predict_files("imported.keras", ["dog.jpg"], top=1)      # doctest: +SKIP
[{'file': 'dog.jpg', 'top': [{'index': 207, 'label': 'golden retriever', 'score': 0.93}]}]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tltf.errors import TltfError

BATCH = 32


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
        try:
            self.class_names = class_names_of(self.model)
        except (ValueError, AttributeError):
            self.class_names = None

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        from tltf.models.head import class_probabilities

        return class_probabilities(self.model.predict(pixels, batch_size=BATCH, verbose=0))


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
    """``[{"file": PATH, "top": [{"index", "label", "score"}, …]}]`` for each image file, in order."""
    from tltf.data.images import load_images

    if top < 1:
        raise TltfError(f"--top {top}: must be at least 1")
    files = [str(f) for f in files]
    if not files:
        raise TltfError("IMAGE: no image files given")
    model = open_model(model_path)
    size = tuple(int(v) for v in model.image_size)
    results = []
    for start in range(0, len(files), BATCH):
        chunk = files[start:start + BATCH]
        probs = np.asarray(model.predict(load_images(chunk, size)))
        for file, best in zip(chunk, top_k(probs, model.class_names, top)):
            results.append({"file": file, "top": best})
    return results
