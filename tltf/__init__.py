"""tltf: transfer learning for Keras 3 / TensorFlow, from a pretrained backbone to an ONNX file.

``import tltf`` is light: it loads neither TensorFlow nor Keras, so the inference runtime (``tltf predict``,
``serve``, ``bench`` and ``drift`` on an ``.onnx``; :mod:`tltf.runtime`) runs in an install without the training
stack. To load a saved tltf model, use :func:`tltf.load_model` (``tltf.load_model("run/model.keras")``), or
``import tltf.keras_objects`` first to make plain ``keras.models.load_model`` know tltf's layers and optimizers.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def __getattr__(name):  # PEP 562: the Keras side loads on first use
    if name == "load_model":
        from tltf.models.loading import load_model

        return load_model
    raise AttributeError(f"module 'tltf' has no attribute {name!r}")
