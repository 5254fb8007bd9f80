"""Reading a Triton model repository (the layout ``tltf package --triton`` writes) for ``tltf serve
--model-repository DIR``, so that one folder serves on a laptop with tltf and on Triton in production.

Each sub-folder with a ``config.pbtxt`` is a model named by the folder (Triton's rule: a ``name`` in the config
must match it). Its ONNX file is ``VERSION/model.onnx`` (or the config's ``default_model_filename``) of the highest
numeric version (Triton's default version policy, ``latest: 1``). The config's batching becomes the model's
batcher (:mod:`tltf.serve.batcher`), as Triton would batch it:

- ``max_batch_size > 0`` with ``dynamic_batching``: requests gathered up to ``max_batch_size`` rows, waiting at most
  ``max_queue_delay_microseconds`` (``preferred_batch_size`` is not used: tltf's batcher takes what is queued);
- ``max_batch_size > 0`` without it, or ``max_batch_size: 0``: each request runs alone;
- ``max_batch_size > 0``: a request of more rows is refused (400, Triton's words: ``inference request batch-size
  must be <= 8 for 'NAME'``), as Triton refuses it, so a client that works here works there.

An output's ``label_filename`` (one class name a line) labels its classification results
(``"parameters": {"classification": k}``), as in Triton, in place of the names in the ONNX file's metadata.

Only the ONNX Runtime backend is served (``platform: "onnxruntime_onnx"`` or ``backend: "onnxruntime"``); any
other model, a missing file, a config that is not protobuf text are one-line :class:`TltfError`\\ s naming it.
The config's syntax is read by :mod:`tltf.deploy.pbtxt` (no tritonclient needed to serve).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tltf.errors import TltfError

ONNX_BACKENDS = ("onnxruntime_onnx", "onnxruntime")


@dataclass(frozen=True)
class RepositoryModel:
    """One model of a repository: its name, ONNX file and batching (``max_batch=1``: each request alone)."""

    name: str
    path: Path
    max_batch: int
    max_delay_ms: float
    #: class names of the outputs with a ``label_filename`` (one name a line, as Triton reads it)
    labels: dict[str, list[str]] = field(default_factory=dict)
    #: the config's ``max_batch_size``: the most rows a request may have (0: no batch dimension, no limit)
    batch_limit: int = 0


def read_model(folder: Path) -> RepositoryModel:
    """The model in ``folder`` (``config.pbtxt`` and its version folders)."""
    from tltf.deploy.pbtxt import as_list, loads

    config_path = folder / "config.pbtxt"
    try:
        config = loads(config_path.read_text(), str(config_path))
    except (OSError, UnicodeDecodeError) as e:
        raise TltfError(f"{config_path}: cannot read it ({type(e).__name__})") from None
    name = config.get("name", folder.name)
    if name != folder.name:
        raise TltfError(f"{config_path}: name {name!r} differs from its folder {folder.name!r} (Triton requires "
                        "them equal)")
    platform = config.get("platform") or config.get("backend")
    if platform not in ONNX_BACKENDS:
        raise TltfError(f"{config_path}: platform {platform!r}: tltf serves ONNX Runtime models only "
                        "(platform: \"onnxruntime_onnx\")")
    versions = sorted((int(p.name), p) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
    filename = config.get("default_model_filename", "model.onnx")
    if not versions:
        raise TltfError(f"{folder}: no version folder (1/{filename})")
    path = versions[-1][1] / filename
    if not path.is_file():
        raise TltfError(f"{path}: no such model file (the latest version of {name!r})")
    labels = {}
    for output in as_list(config.get("output")):
        if isinstance(output, dict) and output.get("label_filename"):
            labels_path = folder / str(output["label_filename"])
            try:
                labels[str(output.get("name"))] = labels_path.read_text().splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise TltfError(f"{labels_path}: cannot read the labels of output {output.get('name')!r} "
                                f"({type(e).__name__})") from None
    max_batch_size = config.get("max_batch_size", 0)
    batching = config.get("dynamic_batching")
    if not isinstance(max_batch_size, int) or max_batch_size < 0:
        raise TltfError(f"{config_path}: max_batch_size {max_batch_size!r} is not a count")
    if max_batch_size > 0 and isinstance(batching, dict):
        delay_us = batching.get("max_queue_delay_microseconds", 0)
        if not isinstance(delay_us, int) or delay_us < 0:
            raise TltfError(f"{config_path}: max_queue_delay_microseconds {delay_us!r} is not a count")
        return RepositoryModel(name, path, max_batch_size, delay_us / 1000.0, labels, max_batch_size)
    return RepositoryModel(name, path, 1, 0.0, labels, max_batch_size)


def read_repository(folder: str | Path) -> list[RepositoryModel]:
    """Every model of the repository ``folder``, by name; none is a one-line error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TltfError(f"--model-repository {folder}: no such folder")
    models = [read_model(p) for p in sorted(folder.iterdir()) if p.is_dir() and (p / "config.pbtxt").is_file()]
    if not models:
        raise TltfError(f"--model-repository {folder}: no model folder with a config.pbtxt (write one with tltf "
                        "package MODEL.onnx --triton DIR)")
    return models
