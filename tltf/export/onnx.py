"""Keras -> ONNX: the inference path of a tltf classifier as a clean, self-describing ONNX graph.

The exported graph takes what every tltf model takes -- raw RGB pixels, float32 in ``[0, 255]``, NHWC, input
``pixels`` of shape ``(batch, H, W, 3)`` with a dynamic batch -- because the normalisation (:class:`Preprocess`) is
inside the model and so inside the graph. Its output ``probabilities`` is always ``(batch, num_classes)``: a binary
head's single sigmoid unit ``p`` is exported as the two columns ``[1 - p, p]``, exactly what
:func:`tltf.models.head.class_probabilities` gives for the Keras model. The ONNX ``metadata_props`` carry everything a
consumer needs (:func:`metadata`): class names, input size, channel order, layout, input range, backbone, version.

With ``features=True`` (``tltf export --features``) the graph has a second, last output ``features``, float32
``(batch, D)``: the pooled penultimate-layer features the classifier's dense layer reads, exactly what
:func:`tltf.strategies.features.feature_extractor` computes in Keras (so ``tltf drift --model FILE.onnx`` sees what
it sees on the ``.keras`` model), named in the metadata (``features_output``, ``features_dims``). The parity gate
compares it with Keras' extractor too. It costs nothing measurable, since the traced function runs preprocessing
and backbone once and feeds both the head and the pooling (:func:`_features_split`): the node count is unchanged.
Measured with onnxruntime on 1 CPU thread, the plain file against the features file asked for both outputs
(median of 9 interleaved rounds): cnn_small at 32 px 650,720 -> 649,848 bytes (shorter tensor names), 0.098 ->
0.100 ms at batch 1, 2.87 -> 2.86 ms at batch 32; mobilenet_v2 at 224 px 8,929,939 -> 8,919,433 bytes, 5.80 ->
5.71 ms at batch 1, 267 -> 253 ms at batch 32 (run-to-run noise both ways). It is opt-in all the same, because it
changes the file's contract: two outputs, and ``tltf serve`` answers a v2 request that names none with both
(mobilenet_v2: 26 KB of JSON features per image beside 63 bytes of probabilities). fp16 and int8 files carry it
too (:mod:`tltf.export.parity`).

Only the inference path is exported: the model is traced with ``training=False`` (Dropout, BatchNorm statistics and
random augmentation layers are inactive), augmentation layers are replaced by identities before tracing, and a
domain-adversarial (DANN) model -- one with a gradient-reversal layer, a domain head, or several outputs -- is
reduced to the plain tltf classifier nested inside it (its label path; :func:`inference_model`).

>>> report = export_onnx("runs/flowers/model.keras", "exported/flowers.onnx")          # doctest: +SKIP
>>> report["max_abs_diff"] < 1e-5, report["transpose_nodes"]                            # doctest: +SKIP
(True, 1)
"""

from __future__ import annotations

import contextlib

import json
import os
import time
from pathlib import Path

import numpy as np

from tltf.atomic import replacing_together, scratch_folder
from tltf.errors import TltfError, first_line
from tltf.export import precision as precisions
from tltf.export.precision import DEFAULT

INPUT_NAME = "pixels"
OUTPUT_NAME = "probabilities"
FEATURES_NAME = "features"
DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 13, 18
INPUT_RANGE = "0..255 float32, preprocessing inside the graph"
OUTPUT_DOC = "probabilities (batch, num_classes); a binary sigmoid head is exported as [1 - p, p]"
TASKS_DOC = ("one output per task, named after it: probabilities (batch, the task's classes); metadata tasks lists "
             "each task's classes")
FEATURES_DOC = ("features (batch, {dims}) float32, the last output: the pooled penultimate-layer features the "
                "classifier's dense layer reads (tltf drift's features)")
PRECISIONS = precisions.names()  # the rows of tltf.export.precision.PRECISIONS


# --- loading and choosing what to export ---------------------------------------------------------------------------

def load_keras(path: str | Path):
    """A ``.keras`` model (:func:`tltf.models.loading.load_model`); a bad path is a one-line :class:`TltfError`."""
    from tltf.models.loading import load_model

    path = Path(path)
    if path.is_file() and path.suffix.lower() != ".keras":
        raise TltfError(f"{path}: expected a .keras model file")
    return load_model(path)


def _is_tltf_classifier(model) -> bool:
    """A single-output model with a ``ClassifierHead`` among its own layers and one image input."""
    from tltf.models.head import ClassifierHead

    try:
        outputs = model.outputs
        inputs = model.inputs
    except (AttributeError, ValueError):
        return False
    if not outputs or len(outputs) != 1 or not inputs or len(inputs) != 1:
        return False
    return any(isinstance(layer, ClassifierHead) for layer in getattr(model, "layers", []))


def _walk_models(model):
    """Nested Keras models, depth first (attributes such as ``model.classifier`` first, then sub-layers)."""
    import keras

    seen = set()
    todo = [getattr(model, name, None) for name in ("classifier", "label_model", "label_classifier")]
    todo += list(getattr(model, "layers", []))
    while todo:
        m = todo.pop(0)
        if not isinstance(m, keras.Model) or id(m) in seen:
            continue
        seen.add(id(m))
        yield m
        todo += list(getattr(m, "layers", []))


def _training_only_layers(model) -> list[str]:
    """Names of layers that only matter in training: gradient reversal, domain heads, augmentation."""
    names = []
    for layer in getattr(model, "layers", []):
        cls = type(layer).__name__
        if cls in ("GradientReversal", "GradientReversalLayer") or "domain" in layer.name.lower():
            names.append(layer.name)
    return names


def _is_augmentation(layer) -> bool:
    """Keras random image layers (RandomFlip, RandomCrop, ..., RandAugment, MixUp, CutMix)."""
    cls = type(layer).__name__
    return cls.startswith("Random") or cls in ("AugMix", "RandAugment", "MixUp", "CutMix", "Solarization")


def _strip_augmentation(model):
    """A functional clone whose augmentation layers are identities (other layers shared, weights included)."""
    import keras

    layers = getattr(model, "layers", [])
    if not any(_is_augmentation(layer) for layer in layers):
        return model
    if not isinstance(model, keras.Sequential) and not hasattr(model, "_nodes_by_depth"):
        raise TltfError(f"{model.name}: a subclassed model with augmentation layers cannot be exported; "
                        "move augmentation to the data pipeline")

    def clone(layer):
        return keras.layers.Identity(name=layer.name) if _is_augmentation(layer) else layer

    return keras.models.clone_model(model, clone_function=clone)


def _label_path(model):
    """``inputs -> ... -> ClassifierHead`` of a functional model whose head is one of its own layers (a DANN model
    from :func:`tltf.adapt.dann.build_dann` shares ``preprocess``/``backbone``/``head`` with its domain branch);
    the sub-graph stops at the head, so the reversal layer and the domain classifier are left out."""
    import keras

    from tltf.models.head import ClassifierHead

    head = next((layer for layer in getattr(model, "layers", []) if isinstance(layer, ClassifierHead)), None)
    if head is None:
        return None
    try:
        inputs = model.inputs
        output = head.output
    except (AttributeError, ValueError):  # subclassed model, or a head called more than once
        return None
    if not inputs or len(inputs) != 1:
        return None
    name = getattr(model, "classifier_name", None) or model.name.removesuffix("_dann")
    return keras.Model(inputs[0], output, name=name)


def inference_model(model):
    """What to export from ``model``: only its inference path.

    - a plain tltf classifier: the model itself;
    - a DANN-style model (gradient reversal, a domain head, or several outputs) whose classifier head is one of
      its layers: the functional sub-graph from the input to the head (the label path, as
      :func:`tltf.adapt.dann.label_model` builds it), sharing the trained layers;
    - a model that holds a tltf classifier as a nested model (or as ``model.classifier``): that classifier.

    Random augmentation layers are replaced by identities in every case. Raises :class:`TltfError` if no
    single-output image classifier can be found.
    """
    if _is_tltf_classifier(model) and not _training_only_layers(model):
        return _strip_augmentation(model)
    label = _label_path(model)
    if label is not None:
        return _strip_augmentation(label)
    for sub in _walk_models(model):
        if _is_tltf_classifier(sub) and not _training_only_layers(sub):
            return _strip_augmentation(sub)
    try:
        single = len(model.outputs) == 1 and len(model.inputs) == 1
    except (AttributeError, ValueError):
        single = False
    if single and not _training_only_layers(model):
        return _strip_augmentation(model)  # a plain image model without a tltf head
    raise TltfError(f"{model.name}: no single-output classifier found to export "
                    "(a DANN model must contain its label classifier head)")


def features_model(model, option: str = "--features"):
    """The Keras feature extractor of a tltf classifier (:func:`tltf.strategies.features.feature_extractor`:
    pixels -> preprocess -> backbone -> global average pooling, sharing its layers): what the head's dense layer
    reads, exported as the ``features`` output. A model without tltf's preprocess and backbone layers is a
    one-line :class:`TltfError` naming ``option``."""
    from tltf.strategies.features import feature_extractor

    try:
        extractor = feature_extractor(model)
    except (ValueError, KeyError) as e:
        first = first_line(e, 120)
        raise TltfError(f"{option}: {model.name} is not a tltf classifier, so it has no penultimate features to "
                        f"export ({first})") from None
    if len(extractor.output_shape) != 2:
        raise TltfError(f"{option}: {model.name}'s pooled features have shape {extractor.output_shape}, not "
                        "(batch, D)")
    return extractor


def model_info(model, extractor=None) -> dict:
    """``class_names``, ``image_size`` (h, w), ``num_classes``, ``backbone``, ``preprocess`` of a Keras classifier;
    with its ``extractor`` (:func:`features_model`), ``features``: the width D of the features output."""
    from tltf.models.head import ClassifierHead
    from tltf.models.preprocess import Preprocess

    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[-1] != 3:
        raise TltfError(f"{model.name}: not an RGB image model (input shape {shape})")
    if shape[1] is None or shape[2] is None:
        raise TltfError(f"{model.name}: the input size must be fixed to export (input shape {shape})")
    head = next((layer for layer in model.layers if isinstance(layer, ClassifierHead)), None)
    n_out = model.output_shape[-1]
    class_names = list(head.class_names) if head is not None else [str(i) for i in range(max(2, n_out))]
    try:
        from tltf.models.classifier import backbone_of

        backbone = backbone_of(model).name
    except (ValueError, AttributeError, ImportError):
        backbone = "unknown"
    pre = next((layer for layer in model.layers if isinstance(layer, Preprocess)), None)
    from tltf.multitask.head import MultitaskHead

    tasks_head = next((layer for layer in model.layers if isinstance(layer, MultitaskHead)), None)
    segments = tasks_head.segments() if tasks_head is not None else None
    if segments:  # one output per task; the class names are the head's, task:class for each column
        class_names = list(tasks_head.class_names)
    return {"class_names": class_names, "num_classes": len(class_names), "image_size": [int(shape[1]),
            int(shape[2])], "backbone": backbone, "preprocess": pre.mode if pre is not None else "unknown",
            "binary_sigmoid": n_out == 1,
            "tasks": [[name, list(classes), start, stop] for name, start, stop, classes in segments or ()],
            "features": int(extractor.output_shape[-1]) if extractor is not None else None}


def metadata(info: dict, precision: str = DEFAULT) -> dict[str, str]:
    """The ONNX ``metadata_props`` (all strings) describing the graph's contract."""
    from tltf import __version__

    tasks = {"tasks": json.dumps([[name, classes] for name, classes, _, _ in info["tasks"]]),
             "output_names": json.dumps([name for name, *_ in info["tasks"]])} if info.get("tasks") else {}
    features = {"features_output": FEATURES_NAME, "features_dims": str(info["features"]),
                "features": FEATURES_DOC.format(dims=info["features"])} if info.get("features") else {}
    return tasks | features | {
        "class_names": json.dumps(info["class_names"]),
        "num_classes": str(info["num_classes"]),
        "image_size": json.dumps(info["image_size"]),
        "input_name": INPUT_NAME,
        "output_name": info["tasks"][0][0] if info.get("tasks") else OUTPUT_NAME,
        "channel_order": "RGB",
        "layout": "NHWC",
        "input_range": INPUT_RANGE,
        "preprocessing": f"inside the graph ({info['preprocess']})",
        "output": TASKS_DOC if info.get("tasks") else OUTPUT_DOC,
        "backbone": info["backbone"],
        "precision": precision,
        "tltf_version": __version__,
    }


# --- conversion ----------------------------------------------------------------------------------------------------

def _features_split(model, extractor):
    """``(trunk, pool, head)``: ``model`` as the layers of its feature ``extractor`` (preprocess, backbone), that
    extractor's pooling (None where the backbone's output is already ``(batch, D)``) and the one head layer after
    them, so that a traced call runs the trunk once and feeds both the head and the pooling. Identity layers
    (stripped augmentation) are skipped; any other layout is a one-line :class:`TltfError`."""
    import keras

    trunk = [layer for layer in extractor.layers if not isinstance(layer, keras.layers.InputLayer)]
    pool = trunk.pop() if isinstance(trunk[-1], keras.layers.GlobalAveragePooling2D) else None
    layers = [layer for layer in model.layers if not isinstance(layer, (keras.layers.InputLayer,
                                                                        keras.layers.Identity))]
    if len(layers) != len(trunk) + 1 or any(a is not b for a, b in zip(layers, trunk)):
        raise TltfError(f"--features: {model.name} is not a tltf classifier (input -> preprocess -> backbone -> "
                        f"head); its layers are {', '.join(layer.name for layer in layers)}")
    return trunk, pool, layers[-1]


def _serving_function(model, h: int, w: int, tasks=(), extractor=None):
    """The traced inference function: ``{probabilities: ...}``, or with ``tasks`` (``[name, classes, start, stop]``)
    one output per task, sliced from a multitask head's columns; with ``extractor`` (:func:`features_model`) also
    ``features``, the extractor's pooling of the backbone output that the head reads (:func:`_features_split`: one
    backbone pass for both; the parity gate checks the probabilities against ``model`` itself)."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, h, w, 3), tf.float32, name=INPUT_NAME)
    split = _features_split(model, extractor) if extractor is not None else None

    @tf.function(input_signature=[spec], autograph=False)
    def serve(pixels):
        features = None
        if split is None:
            probs = model(pixels, training=False)
        else:
            trunk, pool, head = split
            x = pixels
            for layer in trunk:
                x = layer(x, training=False)
            probs = head(x, training=False)
            features = tf.cast(pool(x) if pool is not None else x, tf.float32)
        probs = tf.cast(probs, tf.float32)
        if tasks:
            out = {name: tf.identity(probs[:, start:stop]) for name, _, start, stop in tasks}
        else:
            if probs.shape[-1] == 1:  # binary sigmoid head -> [1 - p, p], as class_probabilities does
                probs = tf.concat([1.0 - probs, probs], axis=-1)
            out = {OUTPUT_NAME: probs}
        if features is not None:
            out[FEATURES_NAME] = features
        return out

    return serve


@contextlib.contextmanager
def _restore_level(logger, level):
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _environ(name: str, value: str):
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _from_graph_def(graph_def, **kwargs):
    """``tf2onnx.convert.from_graph_def``, its optimizers first run without their safety copies: with ``catch_errors``
    (its default) tf2onnx deep-copies the whole graph, weights included, before each of ~60 optimizer passes so that
    a failing pass can be skipped. Measured on ConvNeXt-Tiny at 64 px: 39.2 s -> 20.2 s of conversion, the same ops,
    weights and outputs. Should a pass fail that way, the conversion runs again with tf2onnx's default (the pass
    skipped, as before); a ``TF2ONNX_CATCH_ERRORS`` the user set is left alone."""
    import tf2onnx

    if "TF2ONNX_CATCH_ERRORS" in os.environ:
        return tf2onnx.convert.from_graph_def(graph_def, **kwargs)
    try:
        with _environ("TF2ONNX_CATCH_ERRORS", "FALSE"):
            return tf2onnx.convert.from_graph_def(graph_def, **kwargs)
    except Exception:  # noqa: BLE001  (a pass that fails; tf2onnx's default skips it)
        with _environ("TF2ONNX_CATCH_ERRORS", "TRUE"):
            return tf2onnx.convert.from_graph_def(graph_def, **kwargs)


def convert(model, opset: int = DEFAULT_OPSET, features: bool = False):
    """The float32 ONNX ``ModelProto`` of a Keras classifier's inference path, cleaned and with metadata.

    ``model`` is a loaded Keras model (a tltf classifier or a DANN model holding one). Steps: trace
    ``model(pixels, training=False)`` in a ``tf.function``, freeze it, make XLA-compiled sub-functions inlinable,
    convert with tf2onnx (patched transpose optimizer, custom handlers for ``Erfc``/``ReverseV2``), then rewrite
    tensordots as 1x1 convolutions and re-optimise (:mod:`tltf.export.graph`).
    """
    import onnx
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tf2onnx import tf_loader
    from tf2onnx.convert import tensor_names_from_structed

    from tltf.export import graph

    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise TltfError(f"--opset {opset}: must be between {MIN_OPSET} and {MAX_OPSET}")
    net = inference_model(model)
    extractor = features_model(net) if features else None
    info = model_info(net, extractor)
    if extractor is not None and FEATURES_NAME in [name for name, *_ in info["tasks"]]:
        raise TltfError(f"--features: {net.name} has a task called {FEATURES_NAME!r}, the features output's name")
    h, w = info["image_size"]
    net(np.zeros((1, h, w, 3), np.float32), training=False)  # a model must have been called once
    concrete = _serving_function(net, h, w, info["tasks"], extractor).get_concrete_function()
    inputs = [concrete.inputs[0].name]  # captured tensors (e.g. Normalization constants) follow the real input
    outputs = [t.name for t in concrete.outputs]
    rename = tensor_names_from_structed(concrete, inputs, outputs)
    logger, level = tf.get_logger(), tf.get_logger().level
    logger.setLevel("ERROR")  # TF1-API deprecation notices from the freezing tf2onnx relies on
    with tf.device("/cpu:0"), _restore_level(logger, level):
        frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False, aggressive_inlining=True)
        graph_def = tf_loader.fix_freezing_errors_part2(frozen.graph.as_graph_def(add_shapes=True))
        graph.make_inlinable(graph_def)
        with graph.patched_transpose_optimizer():
            proto, _ = _from_graph_def(
                graph_def, name=net.name, input_names=inputs, output_names=outputs, opset=int(opset),
                custom_op_handlers=graph.CUSTOM_OP_HANDLERS, tensors_to_rename=rename)
    leftovers = sorted({n.op_type for n in proto.graph.node
                        if (n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type))
                        or n.domain not in ("", "ai.onnx", "com.microsoft")})
    if leftovers:
        raise TltfError(f"{net.name}: tf2onnx could not convert TensorFlow ops {', '.join(leftovers)}")
    proto = graph.clean(proto)
    if extractor is not None:
        _features_output_last(proto, net.name)
    proto.producer_name = "tltf"
    from tltf import __version__

    proto.producer_version = __version__
    described = (f"Outputs {', '.join(name for name, *_ in info['tasks'])}: {TASKS_DOC}" if info["tasks"] else
                 f"Output {OUTPUT_NAME}: {OUTPUT_DOC}")
    if extractor is not None:
        described += f"; then {FEATURES_DOC.format(dims=info['features'])}"
    proto.doc_string = (f"tltf classifier ({info['backbone']}, {info['num_classes']} classes). Input {INPUT_NAME}: "
                        f"RGB NHWC float32 0..255, shape (batch, {h}, {w}, 3). {described}.")
    set_metadata(proto, metadata(info))
    onnx.checker.check_model(proto)
    return proto


def _features_output_last(proto, name: str) -> None:
    """Put the ``features`` output after the probabilities (tf2onnx orders a traced dict's outputs by name), so
    output 0 stays what every consumer of a tltf file reads; and check that the features share the classifier's
    backbone: a weighted node that only the features need would mean it runs twice. (Tracing the extractor beside
    the model, and leaving the rest to tf2onnx's duplicate-node merging, did that: the two backbones became one for
    mobilenet_v2 but 8 to 50 of mobilenet_v3_small's 52 convolutions stayed doubled, depending on the weights.)"""
    from tltf.export.graph import _wiring

    outputs = list(proto.graph.output)
    ordered = [o for o in outputs if o.name != FEATURES_NAME] + [o for o in outputs if o.name == FEATURES_NAME]
    del proto.graph.output[:]
    proto.graph.output.extend(ordered)
    producers, _ = _wiring(proto.graph)

    def ancestors(tensors):
        todo, seen = list(tensors), set()
        while todo:
            node = producers.get(todo.pop())
            if node is not None and id(node) not in seen:
                seen.add(id(node))
                todo.extend(node.input)
        return seen

    only_features = ancestors([FEATURES_NAME]) - ancestors(o.name for o in ordered if o.name != FEATURES_NAME)
    alone = [n for n in proto.graph.node if id(n) in only_features and n.op_type in ("Conv", "MatMul", "Gemm")]
    if alone:
        raise TltfError(f"--features: {name}'s features output does not share the classifier's backbone in the "
                        f"converted graph ({len(alone)} weighted nodes would run twice)")


def set_metadata(proto, props: dict[str, str]) -> None:
    """Replace ``proto``'s metadata_props with ``props`` (in place)."""
    import onnx

    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {str(k): str(v) for k, v in props.items()})


def read_metadata(proto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


# --- the export with its parity gate -------------------------------------------------------------------------------

def default_output(model_path: str | Path, out_dir: str | Path = "exported") -> Path:
    """``exported/<name>.onnx``: the model's stem, or its run folder's name for a ``model.keras``."""
    path = Path(model_path)
    name = path.stem
    if name == "model" and path.parent.name not in ("", "."):
        name = path.parent.resolve().name
    return Path(out_dir) / f"{name}.onnx"


def export_onnx(model, out: str | Path, opset: int = DEFAULT_OPSET, precision: str = DEFAULT,
                calibration_data: str | Path | None = None, parity_images: np.ndarray | None = None,
                max_calibration: int = 256, seed: int = 0, progress=None, threshold: float | None = None,
                features: bool = False, slim: str = "auto", runtimes=None, openvino_precision: str = "f32") -> dict:
    """Export ``model`` (a path to a ``.keras`` file or a Keras model) to ``out`` and verify it; returns the report.

    ``precision``: ``fp32`` (parity gate: max |onnxruntime - Keras| <= 1e-4 x output range), ``fp16`` (float16
    weights and compute, float32 I/O; top-1 agreement >= 99 %) or ``int8`` (static QDQ per-channel quantization
    calibrated on the images of ``calibration_data``; top-1 agreement >= 97 %), the rows of
    :data:`tltf.export.precision.PRECISIONS`. The gate runs onnxruntime on ``parity_images``, else the calibration
    images, else structured synthetic images. Nothing is written unless the gate passes: the model and its report
    JSON (:func:`report_path`, with the model's ``sha256``) go to temporary files beside ``out`` and are put in
    place as a pair (:func:`tltf.atomic.replacing_together`): an old report is removed before the new model lands,
    so a report present always describes the model beside it (a kill between the two renames leaves the new model
    without a report; a re-export writes both). ``threshold`` overrides the gate (fp32: the largest difference as a
    fraction of the output range; fp16/int8: the smallest top-1 agreement); the report records the one used.
    ``progress(message)`` is called at each step if given.

    ``slim``: onnxslim on the float32 graph before quantisation -- ``auto`` keeps it where its outputs match the
    original's (otherwise the original, saying why), ``on`` refuses the export instead, ``off`` never slims
    (:mod:`tltf.export.slim`; the report's ``slim``). ``runtimes``: the edge runtimes the passed file is also run on
    and compared with onnxruntime on the parity images (default: those of ``openvino``, ``opencv`` installed; ``()``
    for none), OpenVINO in ``openvino_precision``; the report's ``runtimes`` says per runtime whether it loads, its
    top-1 agreement and max |diff|, and, for one that answers wrongly, the one line refusing it
    (:mod:`tltf.export.portability`).
    """
    from tltf.export import parity, quantize

    say = progress or (lambda message: None)
    row = precisions.get(precision)
    if threshold is not None and not row.gate.valid(threshold):
        raise TltfError(f"{row.gate.option} {threshold}: must be {row.gate.rule}")
    if row.needs_calibration and calibration_data is None:
        raise TltfError(precisions.needs_calibration_message(row))
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise TltfError(f"--out {out}: the file name must end in .onnx")
    source = str(model) if isinstance(model, (str, Path)) else getattr(model, "name", "model")
    if isinstance(model, (str, Path)):
        say(f"loading {model}")
        model = load_keras(model)
    net = inference_model(model)
    extractor = features_model(net) if features else None
    info = model_info(net, extractor)
    h, w = info["image_size"]

    calib = None
    if calibration_data is not None:
        say(f"reading calibration images from {calibration_data}")
        calib = quantize.load_calibration_images(calibration_data, (h, w), limit=max_calibration, seed=seed)
    if parity_images is not None:
        check = np.asarray(parity_images, np.float32)
        if check.ndim != 4 or check.shape[1:] != (h, w, 3):
            raise TltfError(f"parity images: expected shape (N, {h}, {w}, 3), got {check.shape}")
        check_source = "given images"
    elif calib is not None:
        check, check_source = calib, f"calibration images ({calibration_data})"
    else:
        check, check_source = parity.synthetic_images(64, (h, w), seed=seed), "synthetic structured images"

    timings = {}
    t0 = time.perf_counter()
    say(f"converting {source} to ONNX (opset {opset})")
    proto = convert(net, opset=opset, features=features)
    timings["convert_s"] = time.perf_counter() - t0
    converted_nodes = len(proto.graph.node)
    slim_report = None
    if slim != "off":
        from tltf.export.slim import slim as slim_graph

        say("simplifying the graph with onnxslim" + (" (auto: kept where the outputs match)" if slim == "auto"
                                                     else ""))
        t0 = time.perf_counter()
        proto, slim_report = slim_graph(proto, check[:16], slim)
        timings["slim_s"] = time.perf_counter() - t0
    fp32_nodes = len(proto.graph.node)

    with replacing_together(out, report_path(out)) as (tmp, report_tmp):  # a failure leaves the old files
        t0 = time.perf_counter()
        fp32_proto = proto
        if row.quantizer is not None:
            say(row.progress.format(n=0 if calib is None else len(calib)))
            to_precision = getattr(quantize, row.quantizer)
            proto = (to_precision(proto, calib, workdir=out.parent) if row.needs_calibration
                     else to_precision(proto))
            set_metadata(proto, metadata(info, row.name))
        timings["quantize_s"] = time.perf_counter() - t0
        _save(proto, tmp)

        say(f"checking parity with Keras on {len(check)} {check_source}")
        t0 = time.perf_counter()
        keras_probs = parity.keras_probabilities(net, check)
        keras_feats = parity.keras_features(extractor, check) if extractor is not None else None
        result = parity.compare(tmp, keras_probs, check, precision=precision, threshold=threshold,
                                segments=[(start, stop) for _, _, start, stop in info["tasks"]],
                                keras_feats=keras_feats)
        timings["parity_s"] = time.perf_counter() - t0
        report = _report(source, out, tmp, proto, precision, opset, info, result, check_source, fp32_nodes,
                         timings)
        parity.gate(result, precision, out)  # raises TltfError before the file is put in place
        report["converted_nodes"] = converted_nodes
        if slim_report is not None:
            report["slim"] = slim_report
        t0 = time.perf_counter()
        keras_reference = keras_probs[:16] if row.quantizer is not None and not info["tasks"] else None
        report["runtimes"] = _check_runtimes(tmp, out, check[:16], precision, runtimes, openvino_precision, say,
                                             keras_reference, result["threshold"])
        report["timings_s"]["runtimes_s"] = round(time.perf_counter() - t0, 3)
        if row.timed_vs_float32:
            say(f"timing {row.name} against {DEFAULT} on this CPU (batch 1)")
            report["speed_vs_fp32"] = _speed_vs_fp32(fp32_proto, tmp)
        report_tmp.write_text(json.dumps(report, indent=2, default=_plain) + "\n")
    return report


def _check_runtimes(tmp: Path, out: Path, images, precision: str, runtimes, openvino_precision: str, say,
                    keras_reference=None, threshold=None) -> dict:
    """The passed file on each edge runtime against onnxruntime (:func:`tltf.export.portability.check`), run on a
    copy named like ``out`` (OpenVINO picks its reader by the file's extension); ``{}`` where none is installed.
    A quantized file (``keras_reference``: Keras' probabilities on ``images``) is compared with Keras under the
    gate onnxruntime passed (``threshold``): each runtime has its own int8 kernels."""
    import shutil

    from tltf.export import portability

    names = [r for r in portability.EDGE_RUNTIMES if portability.installed(r)] if runtimes is None else \
        list(runtimes)
    if not names:
        return {}
    say(f"checking the file on {', '.join(names)} against onnxruntime ({len(images)} parity images)")
    with scratch_folder("runtimes") as folder:
        copy = Path(folder) / out.name
        shutil.copyfile(tmp, copy)
        if keras_reference is not None:
            return portability.check(copy, images, names, openvino_precision=openvino_precision,
                                     precision=precision, reference=keras_reference, reference_name="Keras",
                                     min_agreement=threshold)
        return portability.check(copy, images, names, openvino_precision=openvino_precision, precision=precision)


def report_path(out: str | Path) -> Path:
    """Where :func:`export_onnx` writes the report of ``out``: ``out`` + ``.json``."""
    return Path(str(out) + ".json")


def _plain(value):
    """A NumPy scalar or array in the report as plain JSON."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of the file at ``path`` (read in 1 MB blocks): which model file a report describes, and the key
    of an ``.onnx`` file's features in ``tltf drift``'s cache."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _speed_vs_fp32(fp32_proto, path: Path) -> dict | None:
    """Batch-1 p50 of the quantized file at ``path`` against its fp32 original, here; None if it cannot be timed.
    (int8 is not faster everywhere: on x86 CPUs onnxruntime has no int8 swish/hard-swish, see the README.)"""
    from tltf.export.latency import compare_latency

    try:
        with scratch_folder("fp32") as folder:
            reference = Path(folder) / "fp32.onnx"
            _save(fp32_proto, reference)
            fp32_ms, ms = compare_latency([reference, path])
    except Exception:  # a measurement, never a reason to fail the export
        return None
    fp32_ms, ms = round(fp32_ms, 3), round(ms, 3)  # the speed-up of the figures shown, as a reader recomputes it
    return {"batch_size": 1, "fp32_ms": fp32_ms, "ms": ms, "speedup": round(fp32_ms / ms, 2) if ms else None}


def _save(proto, path: Path) -> None:
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
        f.flush()
        os.fsync(f.fileno())


def _report(source, out, tmp, proto, precision, opset, info, result, check_source, fp32_nodes, timings) -> dict:
    from tltf.export.graph import count_ops

    ops = count_ops(proto)
    return {
        "model": source,
        "onnx": str(out),
        "precision": precision,
        "opset": int(opset),
        "bytes": tmp.stat().st_size,
        "sha256": file_sha256(tmp),
        "input": {"name": INPUT_NAME, "shape": ["batch", *info["image_size"], 3], "dtype": "float32",
                  "layout": "NHWC", "channel_order": "RGB", "range": INPUT_RANGE},
        "output": ({"names": [name for name, *_ in info["tasks"]], "doc": TASKS_DOC} if info["tasks"] else
                   {"name": OUTPUT_NAME, "shape": ["batch", info["num_classes"]], "doc": OUTPUT_DOC}),
        **({"tasks": {name: classes for name, classes, _, _ in info["tasks"]}} if info["tasks"] else {}),
        **({"features": {"name": FEATURES_NAME, "shape": ["batch", info["features"]],
                         "doc": FEATURES_DOC.format(dims=info["features"]), **result["features"]}}
           if info.get("features") else {}),
        "class_names": info["class_names"],
        "backbone": info["backbone"],
        "max_abs_diff": result["max_abs_diff"],
        "output_range": result["output_range"],
        "relative_diff": result["relative_diff"],
        "top1_agreement": result["top1_agreement"],
        "output_std": result["output_std"],
        "parity_images": result["n"],
        "parity_source": check_source,
        "threshold": result["threshold"],
        "transpose_nodes": ops.get("Transpose", 0),
        "nodes": sum(ops.values()),
        "fp32_nodes": fp32_nodes,
        "node_counts": ops,
        "timings_s": {k: round(v, 3) for k, v in timings.items()} | {
            "onnxruntime_ms_per_image": result["onnxruntime_ms_per_image"]},
    }
