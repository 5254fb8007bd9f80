"""A tiny image classifier with tltf's ONNX contract, built with onnx.helper (no export needed): NHWC ``pixels``
in [0, 255] (32 px), ``probabilities`` of cat/dog/fish, class names and input size in the metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_tiny_classifier(path: str | Path) -> Path:
    """Write the classifier to ``path`` and return it; its answers differ from image to image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"scale": np.array(1 / 255, np.float32), "conv_w": rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32),
               "conv_b": rng.normal(0, 0.1, 8).astype(np.float32), "fc_w": rng.normal(0, 2, (8, 3)).astype(np.float32),
               "fc_b": np.zeros(3, np.float32)}
    nodes = [helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
             helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["conv"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["features"]),
             helper.make_node("Gemm", ["features", "fc_w", "fc_b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                            ["batch", 32, 32, 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 3])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    tiny = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(tiny, {"class_names": json.dumps(["cat", "dog", "fish"]), "image_size": "[32, 32]",
                                  "input_name": "pixels", "output_name": "probabilities"})
    onnx.save(tiny, str(path))
    return Path(path)
