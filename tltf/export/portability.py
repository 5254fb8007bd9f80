"""Does an exported file answer the same on the runtimes edge developers ship? OpenVINO and OpenCV's DNN module
against onnxruntime, on the same images (issue 26).

Each runtime loads the file and runs the images; its first output is compared with onnxruntime's: whether it
loads, its top-1 agreement and its max |difference|. A runtime that gets the file wrong is *refused*, with one line
that names it (:func:`refusal`): ``tltf export`` writes that line in the report, ``tltf bench`` does not time it.
A float32 file must agree with onnxruntime within :data:`FLOAT_TOLERANCE` on every probability. An fp16 or int8
file, which each runtime computes with its own kernels, must agree on top-1 as often as its export gate asks (fp16
99 %, int8 97 %: :mod:`tltf.export.precision`): in ``tltf export`` with Keras, under the gate onnxruntime passed;
in ``tltf bench``, which has no Keras model, with onnxruntime.

Measured (issue 26, 16 images; onnxruntime 1.32, OpenVINO 2026.4, OpenCV 5.1): OpenCV computed
``Mul(x, HardSigmoid(s))`` as ``HardSwish(s)`` (7/16, max |diff| 0.29 on MobileNetV3-Small) until tltf wrote those
gates as ``Add -> Clip -> Mul`` (:mod:`tltf.export.graph`); OpenVINO runs in bf16 on CPUs that have it unless f32
is asked for, which flipped 3 near-tied answers of 16, so :func:`load` asks for f32 (``openvino_precision="bf16"``
to take the speed; then a float file is held to the quantized rule, top-1 agreement).

The runtimes are optional (``pip install 'tltf[edge]'``); onnxruntime, the reference, is always there. Nothing here
imports TensorFlow.

>>> rows = check("exported/flowers.onnx", images)                     # doctest: +SKIP
>>> {name: (row["loads"], row["top1_agreement"], row["ok"]) for name, row in rows.items()}   # doctest: +SKIP
{'openvino': (True, 1.0, True), 'opencv': (True, 1.0, True)}
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Callable

import numpy as np

from tltf.errors import TltfError, first_line
from tltf.runtime.onnx_model import plain_session

RUNTIMES = ("onnxruntime", "openvino", "opencv")
EDGE_RUNTIMES = RUNTIMES[1:]
MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "opencv": "cv2"}
OPENVINO_PRECISIONS = ("f32", "bf16")
#: the largest |runtime - onnxruntime| accepted on a float32 file's probabilities (measured: torchvision's
#: MobileNetV2 1.9e-6 OpenVINO f32, 4.8e-7 OpenCV; random-weight networks, chaotic by construction, up to 3e-5)
FLOAT_TOLERANCE = 1e-4


def installed(runtime: str) -> bool:
    """Whether ``runtime``'s Python package can be imported here."""
    return importlib.util.find_spec(MODULES[runtime]) is not None


def version(runtime: str) -> str:
    module = __import__(MODULES[runtime])
    return str(getattr(module, "__version__", "?")).split("-")[0]


def parse_runtimes(text: str, option: str = "--runtime") -> list[str]:
    """``"onnxruntime,openvino,opencv"`` -> the names, checked: each known and installed (one-line errors)."""
    names = [name.strip().lower() for name in str(text).split(",") if name.strip()]
    if not names:
        raise TltfError(f"{option} {text!r}: name at least one runtime ({', '.join(RUNTIMES)})")
    for name in names:
        if name not in RUNTIMES:
            raise TltfError(f"{option} {name}: unknown runtime (choose from {', '.join(RUNTIMES)})")
        if not installed(name):
            raise TltfError(f"{option} {name}: not installed here (pip install 'tltf[edge]')")
    if len(set(names)) < len(names):
        raise TltfError(f"{option} {text}: a runtime is named twice")
    return names


def load(runtime: str, path: str | Path, threads: int | None = None,
         openvino_precision: str = "f32") -> Callable[[np.ndarray], np.ndarray]:
    """``run(pixels) -> first output`` of the file at ``path`` on ``runtime`` (float32 NHWC pixels in, as every
    tltf file takes). ``threads``: CPU threads (default: the runtime's own). A file the runtime cannot load is a
    one-line :class:`TltfError` naming the runtime."""
    path = Path(path)
    if runtime not in RUNTIMES:
        raise TltfError(f"{runtime}: unknown runtime (choose from {', '.join(RUNTIMES)})")
    if not installed(runtime):
        raise TltfError(f"{runtime}: not installed here (pip install 'tltf[edge]')")
    try:
        if runtime == "onnxruntime":
            return _onnxruntime(path, threads)
        if runtime == "openvino":
            return _openvino(path, threads, openvino_precision)
        return _opencv(path, threads)
    except TltfError:
        raise
    except Exception as e:  # each library raises its own types
        raise TltfError(f"{path}: {runtime} cannot load it ({first_line(e)})") from None


def _onnxruntime(path: Path, threads: int | None):
    session = plain_session(path, threads)
    name = session.get_inputs()[0].name
    first = session.get_outputs()[0].name
    return lambda pixels: session.run([first], {name: pixels})[0]


def _openvino(path: Path, threads: int | None, precision: str):
    import openvino as ov

    if precision not in OPENVINO_PRECISIONS:
        raise TltfError(f"--openvino-precision {precision}: choose {' or '.join(OPENVINO_PRECISIONS)}")
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    request = compiled.create_infer_request()

    def run(pixels):
        request.infer({0: pixels})
        return np.array(request.get_output_tensor(0).data, copy=True)

    return run


def _opencv(path: Path, threads: int | None):
    import cv2

    if threads:
        cv2.setNumThreads(int(threads))
    net = cv2.dnn.readNetFromONNX(str(path))

    def run(pixels):
        net.setInput(pixels)
        return np.array(net.forward(), copy=True)

    return run


def file_precision(path: str | Path) -> str:
    """The ``precision`` a tltf file's metadata names (fp32 where it names none)."""
    return plain_session(path).get_modelmeta().custom_metadata_map.get("precision", "fp32")


def agreement_needed(precision: str, openvino_precision: str = "f32", runtime: str = "") -> float | None:
    """The smallest top-1 agreement with onnxruntime accepted; None for a float32 file held to
    :data:`FLOAT_TOLERANCE` instead."""
    from tltf.export import precision as precisions

    if precision == "fp32" and not (runtime == "openvino" and openvino_precision == "bf16"):
        return None
    name = precision if precision != "fp32" else "fp16"  # bf16 compute: judged like an fp16 file
    try:
        return float(precisions.get(name).threshold)
    except TltfError:
        return 1.0


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """``top1_agreement`` and ``max_abs_diff`` of ``candidate`` outputs against ``reference``'s."""
    candidate = np.asarray(candidate, np.float32).reshape(reference.shape)
    return {"top1_agreement": float((candidate.argmax(axis=1) == reference.argmax(axis=1)).mean()),
            "max_abs_diff": float(np.abs(candidate - reference).max())}


def check(path: str | Path, images: np.ndarray, runtimes=None, openvino_precision: str = "f32",
          precision: str | None = None, reference: np.ndarray | None = None, reference_name: str = "onnxruntime",
          min_agreement: float | None = None) -> dict[str, dict]:
    """Run the file at ``path`` on each of ``runtimes`` (default: the installed :data:`EDGE_RUNTIMES`) and compare
    with onnxruntime on ``images``. Per runtime: ``version``, ``loads``, ``top1_agreement``, ``max_abs_diff``,
    ``images``, ``compared_with``, ``ok`` and, when not ok, ``refused``: the one line :func:`refusal` gives.

    ``reference`` (named ``reference_name``) replaces onnxruntime's outputs as what each runtime is compared with,
    and ``min_agreement`` the top-1 agreement a quantized file must reach: ``tltf export`` compares an int8 or fp16
    file's runtimes with Keras under the gate onnxruntime passed, since each runtime has its own int8 kernels and
    onnxruntime's are not the truth (torchvision's MobileNetV2 int8 on the 20 ImageNet photos, top-1 agreement with
    Keras: onnxruntime 17/20, OpenVINO 16/20, OpenCV 19/20)."""
    path = Path(path)
    images = np.ascontiguousarray(images, np.float32)
    precision = precision or file_precision(path)
    if reference is None:
        reference, reference_name = load("onnxruntime", path)(images), "onnxruntime"
    names = [r for r in EDGE_RUNTIMES if installed(r)] if runtimes is None else list(runtimes)
    rows = {}
    for runtime in names:
        row = {"version": version(runtime), "loads": False, "images": len(images), "compared_with": reference_name}
        if runtime == "openvino":
            row["inference_precision"] = openvino_precision
        try:
            run = load(runtime, path, openvino_precision=openvino_precision)
            row["loads"] = True
            row |= compare(reference, run(images))
        except TltfError as e:
            row["error"] = str(e).replace(str(path), path.name)
        except Exception as e:  # a runtime that loads the file and then fails on it
            row["error"] = f"{path.name}: {runtime} failed to run it ({first_line(e)})"
        needed = agreement_needed(precision, openvino_precision, runtime)
        if needed is not None and min_agreement is not None:
            needed = float(min_agreement)
        row["rule"] = (f"max |diff| <= {FLOAT_TOLERANCE:g}" if needed is None
                       else f"top-1 agreement with {reference_name} >= {100 * needed:g}%")
        if not row["loads"] or "top1_agreement" not in row:
            row["ok"] = False
        elif needed is None:
            row["ok"] = row["max_abs_diff"] <= FLOAT_TOLERANCE and row["top1_agreement"] == 1.0
        else:
            row["ok"] = row["top1_agreement"] >= needed
        if not row["ok"]:
            row["refused"] = refusal(runtime, row, path)
        rows[runtime] = row
    return rows


def refusal(runtime: str, row: dict, path: str | Path) -> str:
    """The one line that says why ``runtime`` must not run the file at ``path``."""
    name = Path(path).name
    if not row.get("loads") or "top1_agreement" not in row:
        return f"{runtime}: refused for {name}: {row.get('error', 'it cannot load the file')}"
    n = row["images"]
    agree = round(row["top1_agreement"] * n)
    versus = row.get("compared_with", "onnxruntime")
    return (f"{runtime} {row['version']}: refused for {name}: it answers unlike {versus} (top-1 {agree}/{n}, "
            f"max |diff| {row['max_abs_diff']:.2g}; the rule: {row['rule']}); do not run this file there")
