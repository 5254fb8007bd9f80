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

A provider that the installed onnxruntime does not have is a one-line :class:`TltfError` (install
``onnxruntime-gpu`` for ``cuda``/``tensorrt``).

>>> model = OnnxModel("exported/flowers.onnx")                       # doctest: +SKIP
>>> model.predict(pixels).shape, model.class_names[:2], model.image_size   # doctest: +SKIP
((8, 5), ['daisy', 'dandelion'], (224, 224))
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from tltf.errors import TltfError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}


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
    so.log_severity_level = 3
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
    """A tuned ``onnxruntime.InferenceSession`` for ``path``."""
    import onnxruntime as ort

    providers = provider_list(provider, image_size or _image_size_of(path), max_batch)
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(provider, threads, spinning),
                                       providers=providers)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TltfError(f"{path}: onnxruntime cannot load it ({first})") from None
    if provider != "cpu" and PROVIDERS[provider] not in session.get_providers():
        raise TltfError(f"--provider {provider}: {PROVIDERS[provider]} failed to initialise "
                        f"(session fell back to {', '.join(session.get_providers())}); check CUDA/cuDNN/TensorRT")
    return session


def _image_size_of(path) -> tuple[int, int]:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return (224, 224)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    return (dims[1].dim_value or 224, dims[2].dim_value or 224) if len(dims) == 4 else (224, 224)


class OnnxModel:
    """An exported tltf classifier in onnxruntime: ``predict(pixels) -> (N, num_classes)`` probabilities.

    ``pixels`` are float32 RGB in ``[0, 255]``, shape ``(N, H, W, 3)`` (a single ``(H, W, 3)`` image is accepted),
    ``H, W`` = :attr:`image_size`. :attr:`class_names` and :attr:`metadata` come from the file.
    """

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None, max_batch: int = 32,
                 spinning: bool | None = None):
        import onnx

        self.path = Path(path)
        if not self.path.is_file():
            raise TltfError(f"{self.path}: no such model file")
        try:
            proto = onnx.load(str(self.path), load_external_data=False)
        except Exception as e:
            raise TltfError(f"{self.path}: not an ONNX file ({type(e).__name__})") from None
        self.metadata = {p.key: p.value for p in proto.metadata_props}
        graph_in = proto.graph.input[0]
        dims = graph_in.type.tensor_type.shape.dim
        if len(dims) != 4 or dims[3].dim_value not in (0, 3):
            raise TltfError(f"{self.path}: expected an NHWC RGB image input, got {len(dims)} dims")
        size = self.metadata.get("image_size")
        self.image_size = tuple(json.loads(size)) if size else (dims[1].dim_value or 224, dims[2].dim_value or 224)
        names = self.metadata.get("class_names")
        self.class_names = json.loads(names) if names else None
        self.provider = provider
        del proto
        self.threads = int(threads or cpu_threads()) if provider == "cpu" else int(threads or 1)
        self.spinning = bool(machine_is_idle() if spinning is None else spinning) and provider == "cpu"
        self.session = make_session(self.path, provider, self.threads, self.image_size, max_batch, self.spinning)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    @property
    def num_classes(self) -> int | None:
        return len(self.class_names) if self.class_names else None

    def run(self, pixels: np.ndarray) -> np.ndarray:
        """One forward pass of the raw graph (no batching, no post-processing)."""
        return self.session.run([self.output_name], {self.input_name: pixels})[0]

    def predict(self, pixels: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """``(N, num_classes)`` float32 probabilities for float32 RGB ``[0, 255]`` pixels ``(N, H, W, 3)``."""
        from tltf.models.head import class_probabilities

        x = np.asarray(pixels)
        if x.ndim == 3:
            x = x[None]
        h, w = self.image_size
        if x.ndim != 4 or x.shape[1:] != (h, w, 3):
            raise TltfError(f"{self.path}: expects pixels of shape (N, {h}, {w}, 3), got {x.shape}")
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if len(x) == 0:
            return np.zeros((0, self.num_classes or 0), np.float32)
        parts = [self.run(x[i:i + batch_size]) for i in range(0, len(x), max(1, batch_size))]
        return class_probabilities(np.concatenate(parts, axis=0).astype(np.float32))

    def __repr__(self) -> str:
        return (f"OnnxModel({str(self.path)!r}, provider={self.provider!r}, image_size={self.image_size}, "
                f"classes={self.num_classes})")
