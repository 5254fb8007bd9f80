"""ONNX deployment: export with a parity gate (fp32, fp16, int8) and an onnxruntime runner.

- :func:`export_onnx` / :func:`convert` (:mod:`tltf.export.onnx`): Keras -> ONNX, inference path only.
- :mod:`tltf.export.graph`: the graph clean-up that keeps Transpose nodes to one.
- :mod:`tltf.export.parity`: the gate that compares onnxruntime with Keras.
- :mod:`tltf.export.quantize`: float16 and int8 (QDQ) variants.
- :class:`OnnxModel` (:mod:`tltf.runtime.onnx_model`): ``predict(pixels) -> (N, num_classes)`` probabilities.

Heavy dependencies (TensorFlow, tf2onnx) load only when a function that needs them runs.
"""

from __future__ import annotations

__all__ = ["OnnxModel", "convert", "default_output", "export_onnx"]


def __getattr__(name):
    if name in ("convert", "default_output", "export_onnx"):
        from tltf.export import onnx as _onnx

        return getattr(_onnx, name)
    if name == "OnnxModel":
        from tltf.runtime.onnx_model import OnnxModel

        return OnnxModel
    raise AttributeError(name)
