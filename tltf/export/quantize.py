"""Reduced precision for exported graphs: float16 (GPU) and int8 static quantization (CPU), float32 I/O kept.

- :func:`to_fp16`: weights and compute in float16 through the float16 converter that ships inside onnxruntime
  (``onnxruntime.transformers.float16``, the same code as onnxconverter-common's), ``keep_io_types=True`` so the
  graph still takes float32 pixels and returns float32 probabilities; the preprocessing arithmetic on raw 0..255
  pixels stays float32 (values such as 255^2 are not float16-safe) -- everything from the first convolution on runs
  in float16. Made for GPUs (CUDA/TensorRT); onnxruntime's CPU provider runs it but casts to float32 where it lacks
  float16 kernels.
- :func:`to_int8`: onnxruntime static quantization in QDQ format, per-channel weights (int8, symmetric) and uint8
  activations, with ranges calibrated on real images (:class:`ImageCalibrationReader` over
  :func:`load_image_folder`). The graph is first pre-processed as onnxruntime advises (shape inference and graph
  optimisation), so BatchNorm-folded Conv+activation patterns quantize as units. The two ends are kept out of
  the static pass:

  - the preprocessing on raw pixels, before the first convolution, stays float32 (as in :func:`to_fp16`):
    quantized, its per-channel affine ran through onnxruntime's slowly broadcasting int8 kernels
    (EfficientNet-B0 took 6.2 ms int8 with it and 3.7 ms without);
  - the classifier gets int8 weights and an int32 bias but no quantized output (:func:`_int8_classifier`), so
    onnxruntime runs it as one ``QGemm`` returning float32 logits, and the softmax stays float32. Quantized as
    usual, logits and probabilities come out in 1/255 steps and near classes tie exactly (torchvision's
    MobileNetV2 on 20 ImageNet photos: one such tie flipped a correct top-1; now 20/20 agreement with Keras).

>>> images = load_image_folder("data/flowers/val", (224, 224), limit=128)     # doctest: +SKIP
>>> int8 = to_int8(fp32_model, images)                                      # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tltf.atomic import scratch_folder
from tltf.errors import TltfError, first_line


# --- calibration images --------------------------------------------------------------------------------------------

def image_files(folder: str | Path, option: str = "--calibration-data") -> list[Path]:
    """Image files in ``folder`` -- flat, or in class sub-folders -- interleaved across sub-folders so that any
    prefix of the list covers the classes evenly."""
    from tltf.runtime.images import is_image_file

    root = Path(folder)
    if not root.is_dir():
        raise TltfError(f"{option} {folder}: not a folder of images")
    flat = sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p))
    groups = [flat] if flat else []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.rglob("*") if p.is_file() and is_image_file(p))
        if files:
            groups.append(files)
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    if not out:
        raise TltfError(f"{option} {folder}: no image files (.jpg, .jpeg, .png, .bmp, .gif) found")
    return out


def load_image_folder(folder: str | Path, size: tuple[int, int], limit: int | None = 256, seed: int = 0,
                      option: str = "--calibration-data") -> np.ndarray:
    """Up to ``limit`` images of ``folder`` as float32 RGB ``(N, h, w, 3)`` in ``[0, 255]``, decoded and resized
    exactly as in training (:func:`tltf.data.images.load_images`); classes are sampled evenly."""
    from tltf.data.images import load_images

    files = image_files(folder, option)
    if limit is not None and len(files) > limit:
        files = files[:limit]
    return load_images([str(f) for f in files], tuple(size))


def load_calibration_images(data: str | Path, size: tuple[int, int], limit: int | None = 256, seed: int = 0,
                            option: str = "--calibration-data") -> np.ndarray:
    """Calibration/parity images from ``data``: an image folder (flat or class folders), or any ``--data`` spec
    (``builtin:NAME``, ``tfds:NAME[:SPLIT]``, a ``.npz``): up to ``limit`` of its training images, drawn at random
    (seeded), decoded and resized as in training."""
    if Path(str(data)).is_dir():
        return load_image_folder(data, size, limit, seed, option)
    from tltf.data import load_source, make_pipeline

    split = load_source(str(data), option=option).train
    order = np.random.default_rng(seed).permutation(len(split))
    split = split.select(order[:limit] if limit is not None else order)
    batches = [x.numpy() for x, _ in make_pipeline(split, tuple(size), 64, cache=False)]
    if not batches:
        raise TltfError(f"{option} {data}: no images")
    return np.concatenate(batches).astype(np.float32)


class ImageCalibrationReader:
    """An onnxruntime ``CalibrationDataReader`` over an array of images, ``batch_size`` at a time."""

    def __init__(self, images: np.ndarray, input_name: str = "pixels", batch_size: int = 8):
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = max(1, int(batch_size))
        self._next = 0

    def get_next(self) -> dict | None:
        if self._next >= len(self.images):
            return None
        batch = self.images[self._next:self._next + self.batch_size]
        self._next += self.batch_size
        return {self.input_name: batch}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return -(-len(self.images) // self.batch_size)


def _as_reader(images, input_name, batch_size=8):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(ImageCalibrationReader, CalibrationDataReader):
        pass

    return Reader(images, input_name, batch_size)


# --- the graph's two ends, kept in float32 ------------------------------------------------------------------------

_WEIGHTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _first_conv_inputs(proto) -> list[str]:
    """Nodes before the first Conv (the preprocessing on raw pixels), kept in float32."""
    names = []
    for node in proto.graph.node:
        if node.op_type in _WEIGHTED:
            break
        names.append(node.name)
    return names


def _head_nodes(proto) -> list[str]:
    """The last weighted layer (the classifier's Gemm) and all after it (softmax), kept in float32."""
    names = []
    for node in reversed(proto.graph.node):
        names.append(node.name)
        if node.op_type in _WEIGHTED:
            break
    return names


# --- fp16 ---------------------------------------------------------------------------------------------------------

def to_fp16(proto):
    """A float16 copy of the float32 ``proto`` with float32 inputs and outputs."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    try:
        return convert_float_to_float16(proto, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST),
                                        node_block_list=_first_conv_inputs(proto))
    except Exception as e:
        first = first_line(e)
        raise TltfError(f"--fp16: float16 conversion failed ({first})") from None


# --- int8 ---------------------------------------------------------------------------------------------------------

def _int8_classifier(proto):
    """``proto`` with its float classifier (the last weighted layer, if a ``Gemm`` on dequantized input; anything
    else stays float) given int8 weights (per output channel, symmetric) and an int32 bias, as static quantization
    would, but no quantized output: onnxruntime runs it as one int8 ``QGemm`` that returns float32 logits."""
    from onnx import helper, numpy_helper

    head = _head_nodes(proto)
    nodes = list(proto.graph.node)
    at = next((i for i, n in enumerate(nodes) if head and n.name == head[-1]), None)
    if at is None or nodes[at].op_type != "Gemm" or len(nodes[at].input) < 2:
        return proto
    gemm = nodes[at]
    inits = {t.name: t for t in proto.graph.initializer}
    source = next((n for n in nodes if gemm.input[0] in n.output), None)
    if (source is None or source.op_type != "DequantizeLinear" or source.input[1] not in inits
            or gemm.input[1] not in inits or (len(gemm.input) > 2 and gemm.input[2] not in inits)):
        return proto
    input_scale = float(numpy_helper.to_array(inits[source.input[1]]))
    weights = numpy_helper.to_array(inits[gemm.input[1]])
    trans_b = next((a.i for a in gemm.attribute if a.name == "transB"), 0)
    axis = 0 if trans_b else 1  # B's output-channel axis
    top = 63 if REDUCE_RANGE else 127  # 7-bit weights as in the convolutions (REDUCE_RANGE)
    scale = np.abs(weights).max(axis=1 - axis) / float(top)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    per_channel = scale.reshape((-1, 1) if axis == 0 else (1, -1))
    name = gemm.input[1]
    new_inits = [numpy_helper.from_array(np.clip(np.round(weights / per_channel), -top, top).astype(np.int8),
                                         f"{name}_int8"),
                 numpy_helper.from_array(scale, f"{name}_int8_scale"),
                 numpy_helper.from_array(np.zeros_like(scale, np.int8), f"{name}_int8_zero_point")]
    new_nodes = [helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_int8_scale", f"{name}_int8_zero_point"],
                                  [name], name=f"{gemm.name}/weights_dequantize", axis=axis)]
    drop = [inits[name]]
    if len(gemm.input) > 2:
        bias_name = gemm.input[2]
        bias_scale = (input_scale * scale).astype(np.float32)
        bias = np.round(numpy_helper.to_array(inits[bias_name]) / bias_scale).astype(np.int32)
        new_inits += [numpy_helper.from_array(bias, f"{bias_name}_int32"),
                      numpy_helper.from_array(bias_scale, f"{bias_name}_int32_scale"),
                      numpy_helper.from_array(np.zeros_like(bias), f"{bias_name}_int32_zero_point")]
        new_nodes.append(helper.make_node(
            "DequantizeLinear", [f"{bias_name}_int32", f"{bias_name}_int32_scale", f"{bias_name}_int32_zero_point"],
            [bias_name], name=f"{gemm.name}/bias_dequantize", axis=0))
        drop.append(inits[bias_name])
    for tensor in drop:
        proto.graph.initializer.remove(tensor)
    proto.graph.initializer.extend(new_inits)
    for node in reversed(new_nodes):
        proto.graph.node.insert(at, node)
    return proto


#: 7-bit weights (onnxruntime's ``reduce_range``). On an x86 CPU without VNNI (AVX2 only, like this AMD EPYC) the
#: u8 x s8 kernels of onnxruntime and OpenVINO add pairs of products in 16 bits, which saturate with 8-bit weights:
#: torchvision's MobileNetV2 int8, calibrated and checked on the 20 ImageNet photos, agreed with Keras on top-1 for
#: 17/20 in onnxruntime (max |diff| 0.85), OpenVINO 12/16, OpenCV 15/16 with 8-bit weights, and for 20/20 (max |diff|
#: 0.23), 16/16, 16/16 with 7-bit ones. A VNNI CPU gave 19/20 with 8 bits (session 11), so 7 bits also make the
#: file answer the same on every x86 CPU.
REDUCE_RANGE = True


def to_int8(proto, images: np.ndarray, workdir: str | Path | None = None, per_channel: bool = True,
            method: str = "minmax"):
    """Static QDQ int8 quantization of the float32 ``proto`` calibrated on ``images`` (float32 RGB 0..255).

    ``method``: ``minmax`` (default), ``entropy`` or ``percentile`` calibration. Temporary files live in a private
    temporary folder that is always removed.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if images is None or len(images) == 0:
        raise TltfError("--calibration-data: no calibration images")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise TltfError(f"calibration method {method!r}: choose from {', '.join(methods)}")
    input_name = proto.graph.input[0].name
    with scratch_folder("int8") as tmp:
        src, pre, dst = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, str(src))
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantize the plain graph if it fails
            pre = src
        graph = onnx.load(str(pre))
        keep_float = _first_conv_inputs(graph) + _head_nodes(graph)
        try:
            quantize_static(
                str(pre), str(dst), _as_reader(images, input_name, 8 if method == "minmax" else 1),
                quant_format=QuantFormat.QDQ, per_channel=per_channel, nodes_to_exclude=keep_float,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=methods[method], reduce_range=REDUCE_RANGE,
                extra_options={"WeightSymmetric": True, "ActivationSymmetric": False},
            )
        except Exception as e:
            first = first_line(e)
            raise TltfError(f"--int8: quantization failed ({first})") from None
        out = _int8_classifier(onnx.load(str(dst)))
    for key in ("producer_name", "producer_version", "doc_string"):
        setattr(out, key, getattr(proto, key))
    return out
