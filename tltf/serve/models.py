"""The loaded models: one onnxruntime session per ONNX file, named by the file's stem, and what it accepts.

Any ONNX file onnxruntime can load is served over the v2 protocol (its inputs and outputs, with their v2
datatypes and shapes, ``-1`` for a dynamic dimension, are its metadata). A file that carries tltf's contract
(:func:`tltf.runtime.onnx_model.read_contract`: an NHWC RGB image input, class names and input size in the metadata)
is also an image classifier for ``/v1/models/{name}/predict``; for any other the reason is kept and becomes that
endpoint's 400 message.

Sessions come from :func:`tltf.runtime.onnx_model.make_session` (the tuned options of ``tltf bench``) with one
exception: intra-op threads never spin-wait, because the event loop that parses requests shares the cores
(spinning workers would take them from it between batches). A model runs once at load time (zeros, batch 1)
when its shapes are known, so a graph that loads but cannot run fails the command, not the first request; then
it runs once more with ``max_batch`` rows, timed: :attr:`ServedModel.rows_per_s`, from which the default bound on
queued requests is set (:mod:`tltf.serve.admission`) and a 503's ``Retry-After`` estimated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tltf.errors import TltfError
from tltf.serve.errors import ApiError
from tltf.serve.protocol import DATATYPES, NUMPY_TO_V2, ORT_TO_V2


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output: name, v2 datatype and shape (``-1`` where the graph leaves it open)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def metadata(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(node) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (node.shape or []))
    return TensorSpec(node.name, ORT_TO_V2.get(node.type, node.type), shape)


class ServedModel:
    """One ONNX file behind the protocol: its session, input/output specs and (maybe) its image contract."""

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None, max_batch: int = 32,
                 name: str | None = None, max_delay_ms: float | None = None, batch_limit: int = 0):
        from tltf.runtime.onnx_model import make_session, read_contract

        self.path = Path(path)
        self.name = name or self.path.stem
        #: the model's own batching (a repository's config.pbtxt), else None: the server's --max-batch/--max-delay-ms
        self.max_batch = int(max_batch) if max_delay_ms is not None else None
        self.max_delay_ms = max_delay_ms
        #: the most rows one request may have (a repository's max_batch_size, refused above as Triton does); 0: any
        self.batch_limit = int(batch_limit)
        self.session = make_session(self.path, provider, threads, max_batch=max_batch, spinning=False)
        self.inputs = [_spec(node) for node in self.session.get_inputs()]
        self.outputs = [_spec(node) for node in self.session.get_outputs()]
        if not self.inputs or not self.outputs:
            raise TltfError(f"{self.path}: the graph has no {'input' if not self.inputs else 'output'} to serve")
        unsupported = [s for s in self.inputs if s.datatype not in DATATYPES]
        if unsupported:
            raise TltfError(f"{self.path}: input {unsupported[0].name!r} of type {unsupported[0].datatype} "
                            "cannot be sent over the v2 protocol here (numeric and BOOL inputs only)")
        #: all inputs and outputs have a dynamic first dimension: requests can be concatenated into one run
        self.batchable = all(s.shape and s.shape[0] == -1 for s in self.inputs + self.outputs)
        from tltf.runtime.onnx_model import read_tasks

        self.tasks = None  # a multitask file: [(task = output name, classes)]
        try:
            metadata, self.image_size, self.class_names = read_contract(self.session, self.path)
            self.tasks = read_tasks(metadata, self.output_names, self.path)
            self.not_images = None
        except TltfError as e:  # served over v2 all the same
            self.image_size, self.class_names, self.not_images = None, None, str(e)
        #: the class names of each output that has them (a multitask file: every task's)
        self.output_classes = (dict(self.tasks) if self.tasks else
                               {self.output_names[0]: self.class_names} if self.class_names else {})
        #: rows per second of one ``max_batch``-row run, timed at load (None: the shapes are not all known)
        self.rows_per_s: float | None = None
        self._warm_up(max_batch)

    def _warm_up(self, max_batch: int) -> None:
        import time

        from tltf.runtime.onnx_model import run_failure

        if not all(d > 0 for s in self.inputs for d in s.shape[1:]):
            return  # an open dimension besides the batch: no shape to run it with
        rows = max(1, int(max_batch)) if self.batchable else 1

        def feeds(n):
            return {s.name: np.zeros((n, *s.shape[1:]) if s.shape else (), DATATYPES[s.datatype])
                    for s in self.inputs}

        try:
            self.session.run(None, feeds(1))
            batch, seconds = feeds(rows), []
            for _ in range(2):  # the first run of a new shape also allocates: the faster one is the rate
                start = time.perf_counter()
                self.session.run(None, batch)
                seconds.append(time.perf_counter() - start)
            self.rows_per_s = rows / max(min(seconds), 1e-6)
        except Exception as e:  # onnxruntime's Fail, InvalidArgument, ...
            raise TltfError(f"{self.path}: onnxruntime failed to run it ({run_failure(e)})") from None

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def metadata(self) -> dict:
        """The v2 model metadata response."""
        return {"name": self.name, "versions": ["1"], "platform": "onnxruntime_onnx",
                "inputs": [s.metadata() for s in self.inputs], "outputs": [s.metadata() for s in self.outputs]}

    def check_inputs(self, arrays: dict[str, np.ndarray]) -> int:
        """The rows (batch dimension) of a request's inputs, after checking their names, datatypes and shapes
        against the graph; anything else is a 400 naming the tensor and what was expected."""
        expected = {s.name: s for s in self.inputs}
        unknown = [name for name in arrays if name not in expected]
        if unknown:
            raise ApiError(400, f"model {self.name!r} has no input {unknown[0]!r} (its inputs: {', '.join(expected)})")
        missing = [name for name in expected if name not in arrays]
        if missing:
            raise ApiError(400, f"model {self.name!r}: input {missing[0]!r} is missing")
        rows = set()
        for name, array in arrays.items():
            spec = expected[name]
            datatype = NUMPY_TO_V2[array.dtype]
            if datatype != spec.datatype:
                raise ApiError(400, f"input {name!r}: datatype {datatype}, model {self.name!r} expects {spec.datatype}")
            fits = len(array.shape) == len(spec.shape) and all(
                want in (-1, got) for want, got in zip(spec.shape, array.shape))
            if not fits:
                raise ApiError(400, f"input {name!r}: shape {list(array.shape)}, model {self.name!r} expects "
                                    f"{list(spec.shape)} (-1: any size)")
            if spec.shape:
                rows.add(int(array.shape[0]))
        if 0 in rows:
            raise ApiError(400, f"model {self.name!r}: an empty batch (0 rows) has nothing to infer")
        if len(rows) > 1:
            raise ApiError(400, f"model {self.name!r}: inputs disagree on the batch size ({sorted(rows)})")
        count = rows.pop() if rows else 1
        if self.batch_limit and count > self.batch_limit:  # Triton's words, so its clients read the same error
            raise ApiError(400, f"inference request batch-size must be <= {self.batch_limit} for '{self.name}'")
        return count

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One onnxruntime call: every output by name. Failures are a 500 :class:`ApiError` in one line."""
        from tltf.runtime.onnx_model import run_failure

        try:
            values = self.session.run(None, feeds)
        except Exception as e:
            raise ApiError(500, f"model {self.name!r}: onnxruntime failed to run it ({run_failure(e)})") from None
        return dict(zip(self.output_names, values))


def load_models(paths, provider: str = "cpu", threads: int | None = None, max_batch: int = 32
                ) -> dict[str, ServedModel]:
    """``{name: ServedModel}`` for ONNX files, named by their stems; every file is checked before any is loaded
    (a missing file, a folder, two files with one stem are one-line :class:`TltfError`)."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise TltfError("MODEL: no ONNX files given")
    seen: dict[str, Path] = {}
    for path in paths:
        if not path.exists():
            raise TltfError(f"{path}: no such model file")
        if not path.is_file():
            raise TltfError(f"{path}: not a file (expected an .onnx model)")
        if path.stem in seen:
            raise TltfError(f"{path}: a second model named {path.stem!r} (after {seen[path.stem]}); models are "
                            "named by their file stems, rename one")
        seen[path.stem] = path
    return {path.stem: ServedModel(path, provider, threads, max_batch) for path in paths}


def load_repository(folder, provider: str = "cpu", threads: int | None = None) -> dict[str, ServedModel]:
    """``{name: ServedModel}`` for a Triton model repository (:mod:`tltf.serve.repository`), each with its config's
    batching and labels files; every config is read before any model is loaded."""
    from tltf.serve.repository import read_repository

    loaded = {}
    for m in read_repository(folder):
        loaded[m.name] = ServedModel(m.path, provider, threads, m.max_batch, name=m.name, max_delay_ms=m.max_delay_ms,
                                     batch_limit=m.batch_limit)
        unknown = [output for output in m.labels if output not in loaded[m.name].output_names]
        if unknown:
            raise TltfError(f"{folder}/{m.name}/config.pbtxt: output {unknown[0]!r} is not an output of {m.path}")
        loaded[m.name].output_classes.update(m.labels)  # the labels files, as Triton labels classifications
    return loaded
