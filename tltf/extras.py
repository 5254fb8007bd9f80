"""The optional parts of a tltf install, and the one-line error when one is missing.

``pip install tltf`` is the inference runtime (onnxruntime, numpy, Pillow, the server): ``predict``, ``serve``,
``bench`` and ``drift`` on an ``.onnx`` file. Training, export and everything that reads a ``.keras`` model need
the training stack (TensorFlow, Keras, tf2onnx, onnx, ...): ``pip install 'tltf[train]'``.
"""

from __future__ import annotations

from tltf.errors import TltfError

TRAIN_EXTRA = "pip install 'tltf[train]'"


def training_stack(what: str) -> None:
    """Load TensorFlow and Keras (quietly, with tltf's Keras objects registered: :mod:`tltf.keras_objects`); a
    one-line :class:`TltfError` saying that ``what`` needs them, and how to install them, where they are missing."""
    try:
        import tltf.keras_objects  # noqa: F401
    except ImportError as e:
        missing = (getattr(e, "name", None) or "tensorflow").split(".")[0]
        raise TltfError(f"{what} needs the training stack ({missing} is not installed here): {TRAIN_EXTRA}") from None
