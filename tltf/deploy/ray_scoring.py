"""Batch scoring on Ray Data (``tltf predict MODEL.onnx --data FOLDER --engine ray --out preds.parquet``).

Ray Data reads the image files (``read_binary_files``: a local folder's files, or a URI Ray reads, ``s3://...``),
decodes and resizes them in a map stage with :mod:`tltf.runtime.images` (the Pillow path of training and of
``tltf predict``, so the pixels and the answers are the same; Ray fuses that stage into the actors' processes), and
an actor pool of onnxruntime sessions scores them (:class:`Scorer`, one intra-op thread each; no TensorFlow
anywhere: the workers import tltf.runtime only). On a remote cluster (``address``) the model travels through Ray's
object store; the images must be where its workers read them (a URI, or a shared file system).

Actors: the cluster's CPUs minus one (one left for reading), at least one. Measured on this 2-core machine (shared,
load 6-8; ``benchmarks/ray_predict.json``): 2 actors on 2 CPUs were slower than 1 (oversubscribed).

The results -- ``file``, ``top_index``, ``top_label``, ``top_score`` (lists of ``top`` each, best first) -- stream
to one Parquet file in the driver, written under a temporary name and renamed when every row is in
(:mod:`tltf.atomic`): a failed or interrupted run leaves no output, never a half file. Rows are in the order Ray
finishes them, not the order of the files (``file`` says which is which).

Without ``address`` a local Ray cluster is started with ``num_cpus`` CPUs (2 by default) and stopped at the end;
with one, the cluster is joined and left running. Measured figures: ``benchmarks/ray_predict.json``.

>>> score("flowers.onnx", "photos/", "preds.parquet", top=3)   # doctest: +SKIP
{'images': 5000, 'seconds': 41.2, 'startup_s': 6.1, 'images_per_s': 121.4, ...}
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from tltf.errors import TltfError

#: rows per onnxruntime call in an actor (tltf predict's batch)
BATCH = 32
#: CPUs of the local cluster started when no address is given
LOCAL_CPUS = 2


def _decode(batch: dict, size: tuple[int, int]) -> dict:
    """A Ray Data batch of ``{"bytes", "path"}`` -> ``{"file", "pixels"}``, decoded as in training."""
    from tltf.runtime.images import decode, resize

    paths = [str(p) for p in batch["path"]]
    pixels = [resize(decode(bytes(data), name=path), size) for data, path in zip(batch["bytes"], paths)]
    return {"file": np.asarray(paths, dtype=object), "pixels": np.stack(pixels).astype(np.float32)}


class Scorer:
    """A Ray actor: one onnxruntime session (the model's path, or its bytes in the object store), ``top`` classes
    per image."""

    def __init__(self, model_ref, name: str, top: int):
        import ray

        from tltf.runtime.onnx_model import OnnxModel

        if isinstance(model_ref, list):  # from the object store (a remote cluster): to a file for onnxruntime
            path = Path(tempfile.mkdtemp(prefix="tltf-ray-")) / name
            path.write_bytes(ray.get(model_ref[0]))
        else:
            path = Path(model_ref)
        self.model = OnnxModel(path, threads=1, spinning=False)
        self.top = top

    def __call__(self, batch: dict) -> dict:
        from tltf.runtime.outputs import top_k

        probs = self.model.predict(batch["pixels"], batch_size=BATCH)
        best = top_k(probs, self.model.class_names, self.top)
        return {"file": batch["file"],
                "top_index": np.asarray([[t["index"] for t in row] for row in best], np.int32),
                "top_label": np.asarray([[t["label"] or "" for t in row] for row in best], dtype=object),
                "top_score": np.asarray([[t["score"] for t in row] for row in best], np.float32)}


def _check_model(model_path: Path):
    """The model's image size and class names, read here before any Ray start-up (bad files fail fast)."""
    from tltf.runtime.onnx_model import OnnxModel

    model = OnnxModel(model_path, threads=1, spinning=False)
    if model.segments:
        raise TltfError(f"{model_path}: a multitask file; --engine ray scores single-task classifiers")
    return model.image_size


def _sources(data) -> list[str] | str:
    """Local files (a list, headers checked as ``tltf predict`` checks them) or a URI handed to Ray as is."""
    if isinstance(data, str) and "://" in data:
        return data
    files = [str(f) for f in data]
    if not files:
        raise TltfError("--data: no image files to score")
    from tltf.runtime.images import check_image

    for file in files:  # every header first: a bad file is named before Ray starts
        check_image(file)
    return [os.path.abspath(f) for f in files]


def _check_reachable(address: str) -> None:
    """A ``HOST:PORT`` address that nothing answers on is a one-line error at once (``ray.init`` retries it for
    minutes: measured over 200 s here); ``auto`` and ``ray://`` addresses are left to Ray."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise TltfError(f"--ray-address {address}: no Ray cluster answers there ({e.strerror or e})") from None


def _start(address: str | None, num_cpus: int) -> tuple[bool, int]:
    """``(started here, cluster CPUs)``: a local cluster of ``num_cpus``, or the one at ``address``."""
    import ray

    if ray.is_initialized():
        return False, int(ray.cluster_resources().get("CPU", 1))
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = f"--ray-address {address}" if address else "a local Ray cluster"
        raise TltfError(f"{where}: cannot start Ray ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})"
                        ) from None
    return True, int(ray.cluster_resources().get("CPU", num_cpus))


ACTOR_INIT_DEATHS = 3


def _quiet(ray) -> None:
    """No progress bars or per-operator log lines from Ray Data on the terminal (the CLI prints the summary)."""
    import logging

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    for attribute in ("print_on_execution_start", "enable_rich_progress_bars"):
        if hasattr(context, attribute):
            setattr(context, attribute, False)
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # an actor whose process dies while it starts (Ray's memory monitor, a crash) is replaced, up to this many in a
    # row, instead of failing the whole run on the first death (Ray Data's default, 0): seen once in CI, where the
    # test process held the memory of 400 earlier tests; a scorer that cannot start at all still fails
    if hasattr(context, "max_consecutive_actor_init_deaths"):
        context.max_consecutive_actor_init_deaths = ACTOR_INIT_DEATHS


def _failure(e: Exception) -> TltfError:
    """A Ray task's error as one line: the worker's own :class:`TltfError` (a file that does not decode) where it
    is in the chain Ray wraps it in, else the first line Ray gives."""
    import re

    todo, seen = [e], set()
    while todo:
        error = todo.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, TltfError):
            return TltfError(f"--engine ray: {error}")
        todo += [getattr(error, "cause", None), error.__cause__, error.__context__]
    found = re.search(r"TltfError: (.+)", str(e))
    lines = [line for line in str(e).splitlines() if line.strip()]
    return TltfError(f"--engine ray: scoring failed ({found.group(1) if found else (lines or [type(e).__name__])[0]})"
                     [:400])


def score(model_path, data, out, top: int = 5, address: str | None = None, num_cpus: int = LOCAL_CPUS,
          actors: int | None = None, batch: int = BATCH) -> dict:
    """Score ``data`` (image paths, or a URI for Ray to read) with ``model_path`` into the Parquet file ``out``.

    ``actors``: onnxruntime actors (default: the cluster's CPUs - 1, at least 1, leaving a CPU to read and decode).
    Returns ``{"images", "seconds", "startup_s", "images_per_s", "actors", "cpus"}``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tltf.atomic import replacing

    if top < 1:
        raise TltfError(f"--top {top}: must be at least 1")
    if num_cpus < 1:
        raise TltfError(f"--ray-cpus {num_cpus}: must be at least 1")
    model_path = Path(model_path)
    if model_path.suffix.lower() != ".onnx":
        raise TltfError(f"{model_path}: --engine ray scores .onnx files (export one with tltf export --onnx)")
    image_size = _check_model(model_path)
    sources = _sources(data)
    began = time.perf_counter()
    import ray

    started, cpus = _start(address, num_cpus)
    _quiet(ray)
    startup = time.perf_counter() - began
    try:
        pool = int(actors or max(1, cpus - 1))
        # a local cluster reads the file; a remote one gets its bytes through the object store (in a list: passed
        # by reference, fetched in the actor)
        model_ref = [ray.put(model_path.read_bytes())] if address else str(model_path.resolve())
        kwargs = {"file_extensions": ["jpg", "jpeg", "png", "bmp", "gif"]} if isinstance(sources, str) else {}
        ds = ray.data.read_binary_files(sources, include_paths=True, **kwargs)
        ds = ds.map_batches(_decode, fn_kwargs={"size": tuple(image_size)}, batch_format="numpy", batch_size=batch)
        ds = ds.map_batches(Scorer, fn_constructor_args=(model_ref, model_path.name, top), batch_size=batch,
                            batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=1)
        schema = pa.schema([("file", pa.string()), ("top_index", pa.list_(pa.int32())),
                            ("top_label", pa.list_(pa.string())), ("top_score", pa.list_(pa.float32()))])
        rows = 0
        with replacing(out) as tmp, pq.ParquetWriter(str(tmp), schema) as writer:
            try:
                for part in ds.iter_batches(batch_format="numpy", batch_size=None):
                    writer.write_table(pa.table({
                        "file": pa.array([str(f) for f in part["file"]], pa.string()),
                        "top_index": pa.array([list(map(int, r)) for r in part["top_index"]], schema.field(1).type),
                        "top_label": pa.array([list(map(str, r)) for r in part["top_label"]], schema.field(2).type),
                        "top_score": pa.array([list(map(float, r)) for r in part["top_score"]], schema.field(3).type),
                    }, schema=schema))
                    rows += len(part["file"])
            except (ray.exceptions.RayError, RuntimeError) as e:
                raise _failure(e) from None
        seconds = time.perf_counter() - began
    finally:
        if started:
            ray.shutdown()
    return {"images": rows, "seconds": seconds, "startup_s": startup, "images_per_s": rows / max(seconds, 1e-9),
            "actors": pool, "cpus": cpus}
