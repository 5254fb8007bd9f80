"""Running an exported tltf ONNX file in onnxruntime: :class:`OnnxModel` and tuned sessions.

The file carries its own contract (see :mod:`tltf.export.onnx`): input ``pixels`` = RGB float32 ``[0, 255]``
NHWC, output ``probabilities`` ``(batch, num_classes)``, class names and input size in the metadata. Sessions are
tuned rather than left at defaults by accident:

- all graph optimisations (``ORT_ENABLE_ALL``: constant folding, Conv+BN/activation fusions, NCHWc layouts);
- CPU: intra-op threads = the CPU cores this process may use, sequential execution, memory-pattern planning;
  threads spin-wait between operators only while the machine is otherwise idle (1-minute load average below
  half a core): spinning is the fastest on an idle machine and the slowest on a busy one (measured on a loaded
  2-core machine, MobileNetV2 batch 1: 3.6 ms without spinning, 7.4 ms with it); ``tltf bench`` measures the
  thread/spinning choices and keeps the fastest;
- CUDA: exhaustive cuDNN convolution search, copies in the default stream, a growing arena;
- TensorRT: FP16 kernels, engine and timing caches on disk (``~/.cache/tltf/trt``), an optimisation profile that
  covers batch 1 to ``max_batch``; CUDA, then CPU, as fallbacks for nodes TensorRT does not take.

Nothing here imports TensorFlow or the ``onnx`` package: a file is parsed once, by onnxruntime, and the contract
is read from the session (its inputs and ``custom_metadata_map``; :func:`read_contract`). Only a TensorRT session
opens a file twice, since its optimisation profile needs the input size before the session exists.

A provider that the installed onnxruntime does not have is a one-line :class:`TltfError` (install
``onnxruntime-gpu`` for ``cuda``/``tensorrt``). So is a file that is not a usable model: an empty, garbage or
truncated file (:func:`make_session`), a graph without an image input or output, metadata that is not the JSON
tltf writes, or an input larger than :data:`MAX_INPUT_SIDE` pixels a side (:func:`read_contract`; ``tltf predict``
and ``tltf bench`` allocate batches of that size).

>>> model = OnnxModel("exported/flowers.onnx")                       # doctest: +SKIP
>>> model.predict(pixels).shape, model.class_names[:2], model.image_size   # doctest: +SKIP
((8, 5), ['daisy', 'dandelion'], (224, 224))
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tltf.errors import TltfError, first_line

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}

#: largest input height/width accepted from a file (one float32 RGB image at 4096x4096 is 200 MB; ``predict``
#: batches fewer images the larger they are)
MAX_INPUT_SIDE = 4096


def cpu_threads() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover  (macOS / Windows)
        return max(1, os.cpu_count() or 1)


def machine_is_idle() -> bool:
    """Whether the 1-minute load average leaves every core free (below 0.5); True where it cannot be read."""
    try:
        return os.getloadavg()[0] < 0.5
    except (AttributeError, OSError):  # pragma: no cover
        return True


def session_options(provider: str = "cpu", threads: int | None = None, spinning: bool | None = None):
    """Tuned ``onnxruntime.SessionOptions`` for ``provider``; ``spinning=None`` spins only on an idle machine."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = True
    so.enable_cpu_mem_arena = True
    so.log_severity_level = 4  # errors reach the caller as exceptions (one-line TltfErrors), not as log lines
    if provider == "cpu":
        so.intra_op_num_threads = int(threads or cpu_threads())
        so.inter_op_num_threads = 1
        spin = machine_is_idle() if spinning is None else spinning
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    else:  # the GPU does the work; one CPU thread feeds it
        so.intra_op_num_threads = int(threads or 1)
    return so


def provider_list(provider: str, image_size=(224, 224), max_batch: int = 32, input_name: str = "pixels",
                  cache_dir: str | Path | None = None) -> list:
    """The ``providers=`` argument for ``InferenceSession``: the chosen provider with tuned options, then
    fallbacks. Raises :class:`TltfError` if the installed onnxruntime lacks it."""
    import onnxruntime as ort

    key = provider.lower()
    if key not in PROVIDERS:
        raise TltfError(f"--provider {provider}: unknown (choose from {', '.join(PROVIDERS)})")
    available = ort.get_available_providers()
    wanted = PROVIDERS[key]
    if wanted not in available:
        hint = "" if key == "cpu" else "; install onnxruntime-gpu (pip install 'tltf[gpu]') on a machine with CUDA"
        raise TltfError(f"--provider {provider}: onnxruntime {ort.__version__} here has no {wanted} "
                        f"(available: {', '.join(available)}){hint}")
    cuda = ("CUDAExecutionProvider", {
        "device_id": 0,
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
        "arena_extend_strategy": "kSameAsRequested",
    })
    if key == "cpu":
        return ["CPUExecutionProvider"]
    if key == "cuda":
        return [cuda, "CPUExecutionProvider"]
    h, w = image_size
    cache = Path(cache_dir) if cache_dir else Path(os.environ.get("TLTF_CACHE", Path.home() / ".cache" / "tltf"))
    cache = cache / "trt"
    cache.mkdir(parents=True, exist_ok=True)
    shape = lambda n: f"{input_name}:{n}x{h}x{w}x3"  # noqa: E731
    trt = ("TensorrtExecutionProvider", {
        "device_id": 0,
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_builder_optimization_level": 3,
        "trt_max_workspace_size": 4 * 1024 ** 3,
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(max(1, max_batch)),
        "trt_profile_max_shapes": shape(max(1, max_batch)),
    })
    fallbacks = [cuda] if "CUDAExecutionProvider" in available else []
    return [trt, *fallbacks, "CPUExecutionProvider"]


def make_session(path: str | Path, provider: str = "cpu", threads: int | None = None, image_size=None,
                 max_batch: int = 32, spinning: bool | None = None):
    """A tuned ``onnxruntime.InferenceSession`` for ``path``; a file onnxruntime cannot load (empty, garbage,
    truncated, not ONNX) is a one-line :class:`TltfError` naming it."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise TltfError(f"{path}: no such model file")
    if path.stat().st_size == 0:
        raise TltfError(f"{path}: not an ONNX model (empty file)")
    if provider == "tensorrt" and image_size is None:
        image_size = _image_size_of(path)
    providers = provider_list(provider, image_size or (224, 224), max_batch)
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(provider, threads, spinning),
                                       providers=providers)
    except Exception as e:
        first = first_line(e)
        raise TltfError(f"{path}: onnxruntime cannot load it ({first})") from None
    if provider != "cpu" and PROVIDERS[provider] not in session.get_providers():
        raise TltfError(f"--provider {provider}: {PROVIDERS[provider]} failed to initialise "
                        f"(session fell back to {', '.join(session.get_providers())}); check CUDA/cuDNN/TensorRT")
    return session


def plain_session(path: str | Path, threads: int | None = None, optimize: bool = True, what: str = ""):
    """A quiet CPU ``onnxruntime.InferenceSession`` with onnxruntime's own defaults (its full graph optimisation
    unless ``optimize=False``; ``threads``: intra-op threads, onnxruntime's choice when None) -- the session the
    export checks compare files in, where :func:`make_session`'s serving tuning (spinning, arenas) has no place. A
    file onnxruntime cannot load is a one-line :class:`TltfError` naming it (``what`` describes it, e.g. "the
    ORT-format file")."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4  # errors reach the caller as exceptions, not as log lines
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as e:
        first = first_line(e)
        raise TltfError(f"{path}: onnxruntime cannot load {what or 'it'} ({first})") from None


def run_failure(e: Exception) -> str:
    """The first line of an onnxruntime error, without its source-file prefix, for a one-line message."""
    import re

    text = first_line(e, None).split("Status Message: ")[-1]
    return re.sub(r"^/\S+:\d+ .*?\) ", "", text)[:200]  # "/onnxruntime_src/...cc:360 void* f(...) Failed to ..."


def _image_size_of(path) -> tuple[int, int]:
    """The input size for TensorRT's optimisation profile, which must be known before its session is made: read
    from a plain CPU session without graph optimisations (the one case where a file is opened twice); 224x224 for
    a file without a tltf contract (onnxruntime then says what is wrong with it, if anything)."""
    try:
        return read_contract(plain_session(path, optimize=False), path)[1]
    except Exception:  # noqa: BLE001  (TltfError or onnxruntime's own: the real session reports it)
        return (224, 224)


def model_metadata(session) -> dict[str, str]:
    """The file's metadata properties (``metadata_props``: tltf's contract), as onnxruntime read them."""
    return dict(session.get_modelmeta().custom_metadata_map)


def read_contract(session, path: str | Path) -> tuple[dict[str, str], tuple[int, int], list[str] | None]:
    """``(metadata, image_size, class_names)`` of the ONNX classifier ``session`` has loaded from ``path``,
    checked: a graph without an NHWC RGB image input, malformed metadata or an input side above
    :data:`MAX_INPUT_SIDE` is a one-line :class:`TltfError` naming the file. Read from onnxruntime's own view of
    the model, so a file is parsed once (no ``onnx.load``)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if not inputs or not outputs:
        raise TltfError(f"{path}: the graph has no {'input' if not inputs else 'output'} to run")
    graph_in = inputs[0]
    if not str(graph_in.type).startswith("tensor("):
        raise TltfError(f"{path}: expected an NHWC RGB image input, got a non-tensor input {graph_in.name!r}")
    dims = list(graph_in.shape or [])
    if len(dims) != 4 or (isinstance(dims[3], int) and dims[3] not in (0, 3)):
        raise TltfError(f"{path}: expected an NHWC RGB image input, got {len(dims)} dims")
    metadata = model_metadata(session)
    size = metadata.get("image_size")
    side = lambda d: d if isinstance(d, int) and d > 0 else 224  # noqa: E731
    try:
        image_size = tuple(json.loads(size)) if size else (side(dims[1]), side(dims[2]))
        if len(image_size) != 2 or not all(type(v) is int and v > 0 for v in image_size):
            raise ValueError
    except (ValueError, TypeError, RecursionError):
        raise TltfError(f"{path}: metadata image_size {str(size)[:40]!r} is not [height, width]") from None
    if max(image_size) > MAX_INPUT_SIDE:
        raise TltfError(f"{path}: input size {image_size[0]}x{image_size[1]} is larger than the "
                        f"{MAX_INPUT_SIDE}x{MAX_INPUT_SIDE} tltf accepts")
    names = metadata.get("class_names")
    try:
        class_names = json.loads(names) if names else None
        if class_names is not None and not (isinstance(class_names, list)
                                             and all(isinstance(n, str) for n in class_names)):
            raise ValueError
    except (ValueError, RecursionError):
        raise TltfError(f"{path}: metadata class_names is not a JSON list of names") from None
    return metadata, image_size, class_names


def read_tasks(metadata: dict, outputs: list[str], path) -> list[tuple[str, list[str]]] | None:
    """The ``tasks`` of a multitask file's metadata, ``[(name, classes)]`` with an output per name, or None."""
    text = metadata.get("tasks")
    if not text:
        return None
    try:
        tasks = [(str(name), [str(c) for c in classes]) for name, classes in json.loads(text)]
    except (ValueError, TypeError, RecursionError):
        raise TltfError(f"{path}: metadata tasks is not a JSON list of [task, classes]") from None
    missing = [name for name, _ in tasks if name not in outputs]
    if missing:
        raise TltfError(f"{path}: metadata names a task {missing[0]!r} that is not an output of the graph")
    return tasks


class OnnxModel:
    """An exported tltf classifier in onnxruntime: ``predict(pixels) -> (N, num_classes)`` probabilities.

    ``pixels`` are float32 RGB in ``[0, 255]``, shape ``(N, H, W, 3)`` (a single ``(H, W, 3)`` image is accepted),
    ``H, W`` = :attr:`image_size`. :attr:`class_names` and :attr:`metadata` come from the file.
    """

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None, max_batch: int = 32,
                 spinning: bool | None = None):
        self.path = Path(path)
        self.provider = provider
        self.threads = int(threads or cpu_threads()) if provider == "cpu" else int(threads or 1)
        self.spinning = bool(machine_is_idle() if spinning is None else spinning) and provider == "cpu"
        self.session = make_session(self.path, provider, self.threads, None, max_batch, self.spinning)
        self.metadata, self.image_size, self.class_names = read_contract(self.session, self.path)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.tasks = read_tasks(self.metadata, [o.name for o in outputs], self.path)  # [(name, classes)] or None
        self.output_names = [name for name, _ in self.tasks] if self.tasks else [self.output_name]
        self.input_dtype = np.float16 if "float16" in inputs[0].type else np.float32

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None

    @property
    def segments(self) -> list[tuple[str, int, int, list[str]]] | None:
        """A multitask file's ``(task, first column, column after the last, classes)`` in :meth:`predict`'s output."""
        from tltf.runtime.outputs import task_segments

        return task_segments(self.tasks) if self.tasks else None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """One forward pass of the raw graph (no batching, no post-processing; a multitask file's outputs side by
        side, task after task, as the Keras head gives them); a graph that onnxruntime cannot
        run (a wrong input, an intermediate too large to allocate, ...) is a one-line :class:`TltfError`."""
        outputs = self._outputs(self.output_names, pixels)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=1)

    def _outputs(self, names: list[str], pixels: np.ndarray) -> list[np.ndarray]:
        """``session.run(names, ...)``, its failures one-line :class:`TltfError` errors."""
        try:
            return self.session.run(names, {self.input_name: pixels})
        except Exception as e:  # onnxruntime's Fail, InvalidArgument, RuntimeException, ...
            raise TltfError(f"{self.path}: onnxruntime failed to run it ({run_failure(e)})") from None

    def _batch(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` as the graph's contiguous ``(N, H, W, 3)`` input (a single ``(H, W, 3)`` image becomes a
        batch of one); another shape is a one-line :class:`TltfError`."""
        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        h, w = self.image_size
        if x.ndim != 4 or x.shape[1:] != (h, w, 3):
            raise TltfError(f"{self.path}: expects pixels of shape (N, {h}, {w}, 3), got {x.shape}")
        return np.ascontiguousarray(x, dtype=self.input_dtype)

    def predict(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """``(N, num_classes)`` float32 probabilities for float32 RGB ``[0, 255]`` pixels ``(N, H, W, 3)``."""
        from tltf.runtime.outputs import class_probabilities

        x = self._batch(pixels)
        if len(x) == 0:
            return np.zeros((0, self.num_classes or 0), np.float32)
        parts = [self.run(x[i:i + batch_size]) for i in range(0, len(x), max(1, batch_size))]
        return class_probabilities(np.concatenate(parts, axis=0).astype(np.float32))

    @property
    def features_output(self) -> str | None:
        """The graph output holding the penultimate-layer features (metadata ``features_output``, written by
        ``tltf export --onnx --features``), or None for a file without one."""
        name = self.metadata.get("features_output") or None
        if name is not None and name not in [o.name for o in self.session.get_outputs()]:
            raise TltfError(f"{self.path}: metadata names a features output {name!r} that is not an output of the "
                            "graph")
        return name

    def features(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """``(N, D)`` float32 penultimate-layer features (the pooled features the classifier's dense layer reads)
        for float32 RGB ``[0, 255]`` pixels ``(N, H, W, 3)``; a file exported without them is a one-line
        :class:`TltfError` saying how to re-export it."""
        return self.features_and_probabilities(pixels, batch_size)[0]

    def features_and_probabilities(self, pixels: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`features` and :meth:`predict`'s probabilities from one pass of the graph per batch."""
        from tltf.runtime.outputs import class_probabilities

        name = self.features_output
        if name is None:
            raise TltfError(f"{self.path}: the file has no features output; re-export it with "
                            "tltf export MODEL.keras --onnx --features")
        x = self._batch(pixels)
        if len(x) == 0:
            width = next(o.shape[-1] for o in self.session.get_outputs() if o.name == name)
            return (np.zeros((0, width if isinstance(width, int) else 0), np.float32),
                    np.zeros((0, self.num_classes or 0), np.float32))
        features, probabilities = [], []
        for i in range(0, len(x), max(1, batch_size)):
            *probs, feats = self._outputs(self.output_names + [name], x[i:i + batch_size])
            features.append(np.asarray(feats, np.float32))
            probabilities.append(class_probabilities(np.concatenate(probs, axis=1)))
        return np.concatenate(features), np.concatenate(probabilities)

    def __repr__(self) -> str:
        return (f"OnnxModel({str(self.path)!r}, provider={self.provider!r}, image_size={self.image_size}, "
                f"classes={self.num_classes})")
