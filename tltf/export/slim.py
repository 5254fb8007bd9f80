"""onnxslim in the export path: the float32 graph simplified (constant folding, dead and duplicate nodes removed,
shape arithmetic folded, ops fused) and kept where its outputs match the original's.

Measured (issue 26; onnxslim 0.1.98, onnxruntime 1.32, batch 1, one thread): outputs within 2e-7, metadata kept,
nodes 169 -> 125 on MobileNetV3-Small and 329 -> 275 on EfficientNet-B0, onnxruntime -10 % and -4 % on them, noise
on MobileNetV2: never slower beyond the timing noise. The choice is therefore made on the outputs alone, so that two
exports of one model give the same file (an earlier ``auto`` kept the slimmed graph only when it timed faster here,
and on a loaded machine two exports of one model came out different). ``mode="auto"`` (the default) keeps the
slimmed graph when its outputs are within :data:`TOLERANCE` and keeps the original otherwise, saying why; ``"on"``
refuses the export instead; ``"off"`` skips onnxslim. The report (``slim`` in the ``.onnx.json``) says what it
removed and the onnxruntime time before and after (measured for the report, not for the choice). The slimmed graph
then goes through the same quantisation and the same parity gate against Keras as any other.

>>> proto, report = slim(proto, images)                                 # doctest: +SKIP
>>> report["nodes_before"], report["nodes_after"], report["kept"]      # doctest: +SKIP
(169, 125, True)
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
from pathlib import Path

import numpy as np

from tltf.errors import TltfError, first_line

MODES = ("auto", "on", "off")
#: the largest |slimmed - original| accepted on the outputs (measured: <= 2e-7)
TOLERANCE = 1e-5
#: interleaved timing rounds of the original and the slimmed graph (0.2 s each at least)
ROUNDS = 3


def available() -> bool:
    return importlib.util.find_spec("onnxslim") is not None


def _ops(proto) -> collections.Counter:
    return collections.Counter(n.op_type for n in proto.graph.node)


def simplify(proto):
    """onnxslim's simplification of ``proto`` (a copy; the metadata, producer and doc string carried over)."""
    import onnx
    import onnxslim

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            slimmed = onnxslim.slim(copy)
    except Exception as e:  # onnxslim raises whatever its passes raise
        first = first_line(e)
        raise TltfError(f"onnxslim failed on the graph ({first})") from None
    del slimmed.metadata_props[:]
    slimmed.metadata_props.extend(proto.metadata_props)
    slimmed.producer_name, slimmed.producer_version = proto.producer_name, proto.producer_version
    slimmed.doc_string = proto.doc_string
    return slimmed


def _outputs(path: Path, images: np.ndarray) -> list[np.ndarray]:
    from tltf.runtime.onnx_model import plain_session

    session = plain_session(path)
    return session.run(None, {session.get_inputs()[0].name: images})


def slim(proto, images: np.ndarray, mode: str = "auto") -> tuple[object, dict | None]:
    """``(the graph to keep, the report)``: ``proto`` slimmed by onnxslim where ``mode`` and the measurement say so
    (see the module docstring), else ``proto`` itself. ``images``: float32 NHWC pixels the outputs are compared on.
    ``mode="off"``: ``(proto, None)``. Without onnxslim installed, ``"on"`` is a one-line :class:`TltfError` and
    ``"auto"`` says so in the report."""
    if mode not in MODES:
        raise TltfError(f"--slim {mode}: choose {', '.join(MODES)}")
    if mode == "off":
        return proto, None
    if not available():
        if mode == "on":
            raise TltfError("--slim on: onnxslim is not installed here (pip install 'tltf[edge]')")
        return proto, {"mode": mode, "kept": False, "error": "onnxslim is not installed (pip install 'tltf[edge]')"}
    import onnxslim

    import onnx

    from tltf.atomic import scratch_folder
    from tltf.export.latency import compare_latency

    try:
        slimmed = simplify(proto)
    except TltfError as e:
        if mode == "on":
            raise TltfError(f"--slim on: {e}") from None
        return proto, {"mode": mode, "kept": False, "error": str(e)}
    before, after = _ops(proto), _ops(slimmed)
    images = np.ascontiguousarray(images, np.float32)
    with scratch_folder("slim") as folder:
        original_path, slimmed_path = Path(folder) / "original.onnx", Path(folder) / "slimmed.onnx"
        onnx.save(proto, str(original_path))
        onnx.save(slimmed, str(slimmed_path))
        diff = max(float(np.abs(a - b).max()) for a, b in zip(_outputs(original_path, images),
                                                               _outputs(slimmed_path, images)))
        ms_before, ms_after = compare_latency([original_path, slimmed_path], rounds=ROUNDS, seconds=0.2)
    ms_before, ms_after = round(ms_before, 3), round(ms_after, 3)  # as the report shows them
    kept = diff <= TOLERANCE
    if mode == "on" and not kept:
        raise TltfError(f"--slim on: onnxslim changed the outputs by up to {diff:.3g} (allowed {TOLERANCE:g}); "
                        "export with --slim auto or off")
    reason = (f"its outputs moved by {diff:.3g}, more than the tolerance {TOLERANCE:g}" if not kept else
              f"the outputs match (within {TOLERANCE:g})")
    return (slimmed if kept else proto), {
        "tool": f"onnxslim {onnxslim.__version__}", "mode": mode, "kept": kept, "reason": reason,
        "nodes_before": sum(before.values()), "nodes_after": sum(after.values()),
        "removed": {op: before[op] - after[op] for op in sorted(before) if before[op] > after[op]},
        "added": {op: after[op] - before[op] for op in sorted(after) if after[op] > before[op]},
        "max_abs_diff": diff, "ms_before": ms_before, "ms_after": ms_after,
        "timed": f"batch 1, median p50 of {ROUNDS} interleaved rounds, onnxruntime on this CPU (for the report; "
                 "the choice rests on the outputs)"}
