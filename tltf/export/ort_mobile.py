"""``tltf export --onnx --target ort-mobile``: the ONNX file in onnxruntime's own ORT format, for its mobile and
minimal builds, with the reduced operator config such a build needs, checked against the ``.onnx``.

The conversion is onnxruntime's converter (:mod:`onnxruntime.tools.convert_onnx_models_to_ort`) run with the
options that keep the outputs and the speed, chosen by measurement -- its defaults keep neither on every file.
Measured on tltf's exports at 224 px (random-weight MobileNetV3-Small and EfficientNet-B0, fp32 and int8; 16
images; batch 1, one thread, onnxruntime 1.32 on this x86 CPU, 2 shared cores, interleaved rounds;
``ort_converter_options`` in ``benchmarks/edge_runtimes.json``):

- ``--optimization_style Fixed`` (the graph optimised once, at conversion). The ``Runtime`` style
  (``*.with_runtime_opt.ort``, optimisations replayed at load) was 2.8x / 1.9x slower than the ``.onnx`` in fp32
  here and needs a session option to replay them, so it is never used. A lower optimisation level is no way out:
  ``basic`` broke the int8 files (max |diff| 0.99, top-1 6/16 on MNv3-S) and was 2.2-2.7x slower in fp32.
- ``--target_platform amd64`` (``--platform amd64``): fp32 files bit-identical to the ``.onnx`` and as fast
  (MNv3-S 14.8 vs 14.8 ms, EffB0 56.7 vs 56.1 ms). Its graph holds x86-only NCHWc layout kernels: for x86 only.
- ``--target_platform arm`` (the default, since "mobile" means ARM): the converter leaves out the x86 NCHWc layout
  and lets int8 QDQ nodes fuse into ARM's signed int8 kernels (``session.qdqisint8allowed``). On this x86 CPU the
  fp32 file runs 3.0-3.2x slower than the ``.onnx`` (MNv3-S 47.2 ms, EffB0 165.8 ms; the converter's own default,
  no target, 2.4-2.6x), which says nothing of its speed on ARM, where those x86 kernels do not exist; its outputs
  match the ``.onnx`` (1.2e-6 MNv3-S, 1.2e-5 on the chaotic random EffB0; 0 in int8).
- int8 files: every Fixed variant gave outputs identical to the ``.onnx`` here; MNv3-S int8 .ort 19.5 ms against
  11.7 ms for the .onnx, EffB0 int8 85-92 vs 81 ms (noisy machine).

The ``.ort`` file is kept only if onnxruntime loads it and its outputs on the parity images are within
:data:`TOLERANCE` of the ``.onnx``'s (int8: the same top-1 and :data:`INT8_TOLERANCE`); the file, the operator
config and the report (``NAME.ort.json``) are written as a set (:func:`tltf.atomic.replacing_together`).

>>> report = export_ort("exported/flowers.onnx", platform="arm")      # doctest: +SKIP
>>> report["ort"], report["required_operators"], report["max_abs_diff"] <= 1e-5   # doctest: +SKIP
('exported/flowers.ort', 'exported/flowers.required_operators.config', True)
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np

from tltf.atomic import replacing_together, scratch_folder
from tltf.errors import TltfError, first_line

PLATFORMS = ("arm", "amd64")
DEFAULT_PLATFORM = "arm"
#: the largest |.ort - .onnx| accepted on a float file (measured on trained files: <= 2e-7; on random-weight
#: networks, chaotic by construction: MNv3-S 1.2e-6, EffB0 1.2e-5; amd64 files: 0)
TOLERANCE = 1e-4
#: an int8 file's kernels may be fused differently for ARM (signed int8): same top-1 and this close
INT8_TOLERANCE = 1e-2
OPTIMIZATION_STYLE = "Fixed"


def config_name(stem: str, type_reduction: bool = False) -> str:
    """The operator config's file name, as onnxruntime's converter names it."""
    return f"{stem}.required_operators{'_and_types' if type_reduction else ''}.config"


def ort_paths(onnx_path: str | Path, type_reduction: bool = False) -> tuple[Path, Path, Path]:
    """``(NAME.ort, NAME.required_operators.config, NAME.ort.json)`` beside ``onnx_path``
    (``NAME.required_operators_and_types.config`` with ``type_reduction``)."""
    onnx_path = Path(onnx_path)
    stem = onnx_path.with_suffix("")
    return (stem.with_suffix(".ort"), stem.parent / config_name(stem.name, type_reduction),
            stem.with_suffix(".ort.json"))


def convert_to_ort(onnx_path: str | Path, folder: str | Path, platform: str = DEFAULT_PLATFORM,
                   type_reduction: bool = False) -> tuple[Path, Path]:
    """Run onnxruntime's converter on ``onnx_path`` into ``folder`` with the measured options (Fixed style, the
    ``platform``'s target; ``type_reduction``: ``--enable_type_reduction``, each operator's input types in the
    config); returns ``(the .ort file, its operator config)``. The converter's prints are swallowed; its failure is
    a one-line :class:`TltfError`."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    if platform not in PLATFORMS:
        raise TltfError(f"--platform {platform}: choose {' or '.join(PLATFORMS)}")
    onnx_path, folder = Path(onnx_path), Path(folder)
    try:
        with contextlib.redirect_stdout(io.StringIO()), _quiet_onnxruntime():
            convert_onnx_models_to_ort(onnx_path, output_dir=folder,
                                       optimization_styles=[OptimizationStyle[OPTIMIZATION_STYLE]],
                                       target_platform=platform, enable_type_reduction=type_reduction)
    except Exception as e:  # the converter raises whatever onnxruntime raised
        first = first_line(e)
        raise TltfError(f"{onnx_path}: onnxruntime's ORT-format converter failed ({first})") from None
    ort_file = folder / onnx_path.with_suffix(".ort").name
    config = folder / config_name(onnx_path.stem, type_reduction)
    if not ort_file.is_file() or not config.is_file():
        raise TltfError(f"{onnx_path}: onnxruntime's ORT-format converter wrote no {ort_file.name} / {config.name}")
    return ort_file, config


@contextlib.contextmanager
def _quiet_onnxruntime():
    """The converter's log lines (its config-file INFO, onnxruntime's NCHWc warning for an amd64 file) off."""
    import logging

    import onnxruntime as ort

    logger = logging.getLogger("ort_format_model.utils")
    level = logger.level
    logger.setLevel(logging.WARNING)
    ort.set_default_logger_severity(3)
    try:
        yield
    finally:
        logger.setLevel(level)
        ort.set_default_logger_severity(2)


def _name_the_model(config: Path, ort_name: str) -> str:
    """The config's text with its ``# - /scratch/NAME.ort`` line naming the file that ships, not the scratch copy."""
    lines = config.read_text().splitlines()
    return "\n".join(f"# - {ort_name}" if line.startswith("# - ") else line for line in lines) + "\n"


def _entries(names: str) -> list[tuple[str, dict | None]]:
    """``Add{"inputs": {"0": ["float"]}},Squeeze`` -> ``[("Add", {...}), ("Squeeze", None)]``: the commas inside an
    operator's type information do not separate operators."""
    found, depth, start = [], 0, 0
    for i, ch in enumerate(names + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            entry = names[start:i].strip()
            if entry:
                name, brace, types = entry.partition("{")
                found.append((name, json.loads(brace + types) if brace else None))
            start = i + 1
    return found


def _config_lines(config: str | Path):
    for line in Path(config).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            domain, _, rest = line.partition(";")
            opset, _, names = rest.partition(";")
            yield f"{domain};{opset}", _entries(names)


def required_operators(config: str | Path) -> dict[str, list[str]]:
    """The operators in an operator config (with or without types): ``{"ai.onnx;17": ["Add", "Conv", ...], ...}``."""
    return {key: sorted(name for name, _ in entries) for key, entries in _config_lines(config)}


def required_types(config: str | Path) -> dict[str, dict]:
    """The per-operator type information of a ``required_operators_and_types.config``:
    ``{"ai.onnx;11;Conv": {"inputs": {"0": ["float"]}}, ...}`` (operators without any left out)."""
    return {f"{key};{name}": types for key, entries in _config_lines(config) for name, types in entries if types}


def _session(path: Path):
    from tltf.runtime.onnx_model import plain_session

    return plain_session(path, threads=1, what="the ORT-format file" if path.suffix == ".ort" else "")


def compare_ort(onnx_path: str | Path, ort_path: str | Path, images: np.ndarray) -> dict:
    """``max_abs_diff`` and ``top1_agreement`` of the ``.ort`` file's first output against the ``.onnx``'s on
    ``images`` (float32 NHWC 0..255), both in onnxruntime."""
    ref_session, ort_session = _session(Path(onnx_path)), _session(Path(ort_path))
    name = ref_session.get_inputs()[0].name
    ref = ref_session.run(None, {name: images})[0]
    got = ort_session.run(None, {name: images})[0]
    return {"max_abs_diff": float(np.abs(got - ref).max()),
            "top1_agreement": float((got.argmax(axis=1) == ref.argmax(axis=1)).mean()), "images": len(images)}


def batch1_ms(paths, pixels: np.ndarray, rounds: int = 3, seconds: float = 0.3) -> list[float]:
    """p50 ms of each file in ``paths`` (``.onnx`` or ``.ort``) on ``pixels`` in onnxruntime with one thread,
    timed in interleaved rounds (the median of the rounds' p50)."""
    from tltf.export.latency import Timing, measure

    sessions = [_session(Path(p)) for p in paths]
    name = sessions[0].get_inputs()[0].name
    timing = Timing(warmup=3, min_iters=5, max_iters=1000, min_time_s=seconds)
    p50 = [[] for _ in sessions]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            p50[i].append(1000 * float(np.median(measure(lambda s=s: s.run(None, {name: pixels}), timing))))
    return [float(np.median(v)) for v in p50]


def _is_quantized(onnx_path: Path) -> bool:
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in proto.graph.node)


def export_ort(onnx_path: str | Path, platform: str = DEFAULT_PLATFORM, images: np.ndarray | None = None,
               progress=None, type_reduction: bool = False) -> dict:
    """Convert the tltf ``.onnx`` file at ``onnx_path`` to ``NAME.ort`` beside it, with
    ``NAME.required_operators.config`` (the operators a minimal onnxruntime build must include: ``build.sh
    --minimal_build --include_ops_by_config``) and the report ``NAME.ort.json``, which it returns.

    The ``.ort`` file must load in onnxruntime and answer like the ``.onnx`` on ``images`` (default: 16 synthetic
    structured images of the model's size): max |difference| <= :data:`TOLERANCE` (an int8 file: the same top-1
    and <= :data:`INT8_TOLERANCE`), else nothing is written and a one-line :class:`TltfError` says by how much.

    ``type_reduction``: the config is ``NAME.required_operators_and_types.config``, with each operator's input
    types, for a build that also keeps only those types' kernels (``--enable_reduced_operator_type_support``)."""
    from tltf.runtime.onnx_model import OnnxModel

    say = progress or (lambda message: None)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise TltfError(f"{onnx_path}: no such model file")
    if platform not in PLATFORMS:
        raise TltfError(f"--platform {platform}: choose {' or '.join(PLATFORMS)}")
    model = OnnxModel(onnx_path, threads=1)
    h, w = model.image_size
    if images is None:
        from tltf.export.parity import synthetic_images

        images = synthetic_images(16, (h, w), seed=1)
    images = np.ascontiguousarray(images, np.float32)
    quantized = _is_quantized(onnx_path)
    ort_path, config_path, report_path = ort_paths(onnx_path, type_reduction)
    flags = f"--optimization_style {OPTIMIZATION_STYLE} --target_platform {platform}" + (
        " --enable_type_reduction" if type_reduction else "")
    say(f"converting {onnx_path} to the ORT format for {platform} (onnxruntime's converter, {flags})")
    with scratch_folder("ort") as folder, replacing_together(ort_path, config_path, report_path,
                                                             suffix=".ort") as (ort_tmp, config_tmp, report_tmp):
        converted, config = convert_to_ort(onnx_path, folder, platform, type_reduction)
        say(f"checking the .ort file against the .onnx on {len(images)} images")
        result = compare_ort(onnx_path, converted, images)
        tolerance = INT8_TOLERANCE if quantized else TOLERANCE
        if result["max_abs_diff"] > tolerance or (quantized and result["top1_agreement"] < 1.0):
            raise TltfError(f"{ort_path}: not written: the ORT-format file differs from {onnx_path.name} by up to "
                            f"{result['max_abs_diff']:.3g} (allowed {tolerance:g}), top-1 agreement "
                            f"{100 * result['top1_agreement']:.1f}% on {len(images)} images")
        try:
            onnx_ms, ort_ms = batch1_ms([onnx_path, converted], images[:1])
            speed = {"batch_size": 1, "threads": 1, "onnx_ms": round(onnx_ms, 3), "ort_ms": round(ort_ms, 3),
                     "measured_on": "this machine (an ARM file timed on x86 says nothing of ARM)"}
        except Exception:  # a measurement, never a reason to fail the export
            speed = None
        shutil.copyfile(converted, ort_tmp)
        config_tmp.write_text(_name_the_model(config, ort_path.name))
        import onnxruntime

        report = {
            "onnx": str(onnx_path), "ort": str(ort_path), "required_operators": str(config_path),
            "platform": platform, "type_reduction": type_reduction,
            "converter": f"onnxruntime {onnxruntime.__version__} convert_onnx_models_to_ort {flags}",
            "bytes": ort_tmp.stat().st_size, "onnx_bytes": onnx_path.stat().st_size,
            "operators": required_operators(config_tmp),
            "max_abs_diff": result["max_abs_diff"], "top1_agreement": result["top1_agreement"],
            "parity_images": result["images"], "tolerance": tolerance, "latency": speed,
            "minimal_build": f"./build.sh --minimal_build --include_ops_by_config {config_path.name}" + (
                " --enable_reduced_operator_type_support" if type_reduction else ""),
        }
        if type_reduction:
            report["operator_types"] = required_types(config_tmp)
        report_tmp.write_text(json.dumps(report, indent=2) + "\n")
    ort_paths(onnx_path, not type_reduction)[1].unlink(missing_ok=True)  # it described the .ort just replaced
    return report
