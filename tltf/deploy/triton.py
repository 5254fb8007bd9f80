"""A Triton model repository from an ONNX file: ``DIR/NAME/1/model.onnx`` beside ``DIR/NAME/config.pbtxt``.

The configuration is read off the file, not guessed: every graph input and output with its Triton datatype and
dims (the batch dimension left out: it is ``max_batch_size``'s), the image input's height and width from tltf's
contract (:func:`tltf.runtime.onnx_model.read_contract`) where the graph leaves them open; the class names go to
``labels.txt`` (one a line, in output order) named by the output's ``label_filename``, so Triton's classification
extension (``"parameters": {"classification": k}``) answers with labels. A multitask file gets one labels file
per task output.

Dynamic batching is on, with ``preferred_batch_size`` the batch sizes that ``tltf bench`` found within
:data:`PREFERRED_WITHIN` of the best images/s (a short bench of the file, or a bench JSON given), and
``max_batch_size`` the largest size benched. ``max_queue_delay_microseconds`` is 0 on CPU (requests that queue
while a batch runs still share the next one; ``tltf serve``'s measurement: 302 img/s at 0 ms vs 263 at 5 ms, 16
clients on 2 cores). A graph whose batch dimension is fixed gets ``max_batch_size: 0`` and full dims, without
dynamic batching (Triton's rule for models that do not batch).

``tltf serve --model-repository DIR`` reads the same folder (:mod:`tltf.serve.repository`), so one repository
serves on a laptop and on Triton. Writing is atomic per file (:mod:`tltf.atomic`); the ONNX file is copied
last-but-one and the config last, so a repository with a config is complete.

>>> write_repository("flowers.onnx", "repo", name="flowers", bench_sizes=(1, 8, 32))   # doctest: +SKIP
PosixPath('repo/flowers')
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tltf.deploy.pbtxt import Enum, dumps
from tltf.errors import TltfError

#: onnxruntime tensor types -> Triton's DataType
TRITON_TYPES = {"tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16", "tensor(double)": "TYPE_FP64",
                "tensor(bfloat16)": "TYPE_BF16", "tensor(int8)": "TYPE_INT8", "tensor(int16)": "TYPE_INT16",
                "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64", "tensor(uint8)": "TYPE_UINT8",
                "tensor(uint16)": "TYPE_UINT16", "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64",
                "tensor(bool)": "TYPE_BOOL", "tensor(string)": "TYPE_STRING"}
#: a batch size is preferred when its images/s is within this fraction of the best benched
PREFERRED_WITHIN = 0.9
BENCH_SIZES = (1, 8, 32)
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
LABELS = "labels.txt"


def check_name(name: str) -> str:
    if not NAME.match(name or "") or len(name) > 128:
        raise TltfError(f"--name {name!r}: a model name is letters, digits, '_', '-' and '.' (a folder and a URL "
                        "path segment)")
    return name


def preferred_batch_sizes(results: list[dict], within: float = PREFERRED_WITHIN) -> tuple[list[int], int]:
    """``(preferred sizes, max_batch_size)`` from ``tltf bench`` rows (``runtime``, ``batch_size``,
    ``images_per_s``): the onnxruntime sizes within ``within`` of the best images/s, and the largest size."""
    rows = [r for r in results if r.get("runtime", "onnxruntime") == "onnxruntime" and r.get("images_per_s")]
    if not rows:
        raise TltfError("bench results: no onnxruntime rows with images_per_s to choose batch sizes from")
    best: dict[int, float] = {}
    for r in rows:
        best[int(r["batch_size"])] = max(best.get(int(r["batch_size"]), 0.0), float(r["images_per_s"]))
    top = max(best.values())
    return sorted(b for b, v in best.items() if v >= within * top), max(best)


def read_bench(path: str | Path) -> list[dict]:
    """The ``results`` rows of a ``tltf bench --json`` file; anything else is a one-line error naming it."""
    import json

    path = Path(path)
    try:
        rows = json.loads(path.read_text())["results"]
        if not isinstance(rows, list):
            raise TypeError
    except FileNotFoundError:
        raise TltfError(f"--bench-json {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TltfError(f"--bench-json {path}: not a tltf bench JSON ({type(e).__name__})") from None
    return rows


def bench_rows(model_path: str | Path, sizes=BENCH_SIZES, seconds: float = 0.5) -> list[dict]:
    """A short ``tltf bench`` of the file on this machine (onnxruntime, CPU) at ``sizes``."""
    from tltf.bench.runner import Timing, run_bench

    timing = Timing(warmup=2, min_iters=3, max_iters=50, min_time_s=seconds)
    return run_bench(str(model_path), batch_sizes=sizes, timing=timing)["results"]


def _tensor(node, dims: list[int]) -> dict:
    datatype = TRITON_TYPES.get(node.type)
    if datatype is None:
        raise TltfError(f"tensor {node.name!r}: type {node.type} has no Triton datatype")
    return {"name": node.name, "data_type": Enum(datatype), "dims": dims}


def model_config(model_path: str | Path, name: str, preferred: list[int] | None = None, max_batch: int = 32,
                 max_delay_us: int = 0, instances: int = 1) -> tuple[dict, dict[str, list[str]]]:
    """``(config, labels)``: the ``ModelConfig`` as a dict for :func:`tltf.deploy.pbtxt.dumps`, and the class names
    per output that has them (``{output: names}``) for the labels files."""
    from tltf.runtime.onnx_model import make_session, read_contract, read_tasks

    session = make_session(model_path, threads=1)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    try:
        metadata, image_size, class_names = read_contract(session, model_path)
        tasks = read_tasks(metadata, [o.name for o in outputs], model_path)
    except TltfError:  # any ONNX file packages; only a tltf classifier has labels and an image size
        image_size, class_names, tasks = None, None, None
    shapes = {}
    for node in [*inputs, *outputs]:
        shapes[node.name] = [d if isinstance(d, int) and d > 0 else -1 for d in (node.shape or [])]
    if image_size is not None:  # NHWC: the contract's size where the graph leaves it open
        shape = shapes[inputs[0].name]
        shape[1:3] = [s if s > 0 else v for s, v in zip(shape[1:3], image_size)]
        shape[3] = 3
    batches = all(shapes[n.name] and shapes[n.name][0] == -1 for n in [*inputs, *outputs])
    cut = 1 if batches else 0
    labels = dict(tasks) if tasks else ({outputs[0].name: class_names} if class_names else {})
    config = {"name": name, "platform": "onnxruntime_onnx", "max_batch_size": int(max_batch) if batches else 0,
              "input": [_tensor(n, shapes[n.name][cut:]) for n in inputs], "output": []}
    for node in outputs:
        tensor = _tensor(node, shapes[node.name][cut:])
        if node.name in labels:
            if tensor["dims"] and tensor["dims"][-1] > 0 and tensor["dims"][-1] != len(labels[node.name]):
                raise TltfError(f"{model_path}: output {node.name!r} has {tensor['dims'][-1]} columns but "
                                f"{len(labels[node.name])} class names")
            tensor["label_filename"] = label_file(node.name, len(labels) > 1)
        config["output"].append(tensor)
    if batches:
        sizes = sorted({b for b in (preferred or []) if 1 <= b <= max_batch})
        config["dynamic_batching"] = {**({"preferred_batch_size": sizes} if sizes else {}),
                                      "max_queue_delay_microseconds": int(max_delay_us)}
    config["instance_group"] = [{"count": int(instances), "kind": Enum("KIND_CPU")}]
    return config, labels


def label_file(output: str, several: bool) -> str:
    return f"labels_{re.sub(r'[^A-Za-z0-9_.-]', '_', output)}.txt" if several else LABELS


def triton_model_config():
    """Triton's ``model_config_pb2`` as an installed tritonclient ships it, or None. Loaded from its file: importing
    ``tritonclient.grpc`` would need grpcio, and ``tritonclient[grpc]`` pins protobuf<7 (measured: installing it
    here would downgrade protobuf 7.36.2, which TensorFlow, onnx and onnxruntime use, to 6.33.6); the generated
    module itself needs protobuf alone."""
    import importlib.util

    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if not path.is_file():
        return None
    module_spec = importlib.util.spec_from_file_location("tltf_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001  (a protobuf runtime too old for the generated code: no check, not a failure)
        return None
    return module


def check_config(text: str, where: str) -> bool:
    """Parse ``text`` with Triton's ``ModelConfig`` protobuf where tritonclient is installed (True), else do nothing
    (False); a field or value Triton does not know is a one-line :class:`TltfError`."""
    module = triton_model_config()
    if module is None:
        return False
    from google.protobuf import text_format

    try:
        text_format.Parse(text, module.ModelConfig())
    except text_format.ParseError as e:
        raise TltfError(f"{where}: Triton's ModelConfig rejects it ({e})") from None
    return True


def write_repository(model_path: str | Path, folder: str | Path, name: str | None = None,
                     bench_results: list[dict] | None = None, bench_sizes=BENCH_SIZES, max_delay_us: int = 0
                     ) -> Path:
    """Write ``folder/NAME/{config.pbtxt, 1/model.onnx, labels…}`` for ``model_path`` and return ``folder/NAME``.
    ``bench_results`` (``tltf bench`` rows) choose the batch sizes; without them a short bench runs here."""
    from tltf.atomic import make_folder, replacing

    model_path = Path(model_path)
    if not model_path.is_file():
        raise TltfError(f"{model_path}: no such model file")
    if model_path.suffix.lower() != ".onnx":
        raise TltfError(f"{model_path}: expected an .onnx file (export one with `tltf export MODEL.keras --onnx`)")
    name = check_name(name or model_path.stem)
    make_folder(folder, "--triton")
    rows = bench_results if bench_results is not None else bench_rows(model_path, bench_sizes)
    preferred, max_batch = preferred_batch_sizes(rows)
    config, labels = model_config(model_path, name, preferred, max_batch, max_delay_us)
    home = Path(folder) / name
    for output, names in labels.items():
        with replacing(home / label_file(output, len(labels) > 1)) as tmp:
            tmp.write_text("".join(f"{n}\n" for n in names))
    with replacing(home / "1" / "model.onnx") as tmp:
        shutil.copyfile(model_path, tmp)
    text = f"# written by tltf package from {model_path.name}; batch sizes from tltf bench\n" + dumps(config)
    check_config(text, str(home / "config.pbtxt"))
    with replacing(home / "config.pbtxt") as tmp:
        tmp.write_text(text)
    return home
