"""Data: sources (folders, npz, TFDS, built-in) -> splits -> one tf.data pipeline.

TensorFlow loads when a name below that needs it is first used (``tltf.data.load_data``, ``make_pipeline``, ...),
not on ``import tltf.data``: :mod:`tltf.data.folders` (scanning image folders) and :mod:`tltf.data.split` run
without it, in the inference runtime.

>>> data = load_data("builtin:shapes", val_split=0.2, seed=0)     # doctest: +SKIP
>>> train = make_pipeline(data.train, (64, 64), 32, training=True) # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tltf.errors import TltfError

if TYPE_CHECKING:
    from tltf.data.sources import Source

_LAZY = {"Augment": "tltf.data.augment", "make_pipeline": "tltf.data.pipeline", "Source": "tltf.data.sources",
         "Split": "tltf.data.sources", "array_split": "tltf.data.sources", "folder_source": "tltf.data.sources",
         "npz_source": "tltf.data.sources", "tfds_source": "tltf.data.sources",
         "stratified_split": "tltf.data.split"}

__all__ = ["Augment", "Source", "Split", "array_split", "load_data", "load_source", "make_pipeline",
           "stratified_split"]


def __getattr__(name):  # PEP 562: the TensorFlow-backed names load on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tltf.data' has no attribute {name!r}")


def load_source(spec: str, data_dir: str | None = None, option: str = "--data") -> Source:
    """``builtin:NAME``, ``tfds:NAME[:SPLIT]``, a ``.npz`` file, a CSV manifest (``labels.csv[:COLUMN]``,
    :mod:`tltf.data.manifest`) or an image folder."""
    text = str(spec)
    if text.startswith("builtin:"):
        from tltf.data.builtin import builtin_source

        return builtin_source(text.split(":", 1)[1], option)
    from tltf.data.sources import folder_source, npz_source, tfds_source

    if text.startswith("tfds:"):
        return tfds_source(text.split(":", 1)[1], data_dir, option)
    from tltf.data.manifest import is_manifest, manifest_source

    if is_manifest(text):
        return manifest_source(text, option)
    path = Path(text)
    if path.suffix == ".npz":
        return npz_source(path, option)
    if path.is_dir():
        return folder_source(path, option)
    if not path.exists():
        raise TltfError(f"{option} {text}: no such file or folder (expected a folder, .npz, .csv manifest, "
                        "tfds:NAME or builtin:shapes)")
    raise TltfError(f"{option} {text}: not a folder, .npz, .csv manifest, tfds:NAME or builtin:NAME")


def load_data(spec, val_split: float = 0.2, seed: int = 0, data_dir: str | None = None,
              option: str = "--data") -> Source:
    """The source with a validation split: its own, or ``val_split`` of train (stratified, seeded). ``spec`` is a
    ``--data`` spec, or a :class:`Source` already read (left as it is: a copy gets the split), so runs on the same
    data (a refit's hold-out run and its final run) scan a folder once."""
    from tltf.data.sources import Source
    from tltf.data.split import stratified_split

    if isinstance(spec, Source):
        source, spec = replace(spec), spec.name
    else:
        source = load_source(spec, data_dir, option)
    if source.val is None and val_split > 0:
        if not 0 < val_split < 1:
            raise TltfError(f"--val-split {val_split}: must be between 0 and 1")
        train_idx, val_idx = stratified_split(source.train.selected_labels, val_split, seed)
        source.val = source.train.select(val_idx)
        source.train = source.train.select(train_idx)
    if len(np.unique(source.train.selected_labels)) < 2:
        raise TltfError(f"{option} {spec}: the training split has a single class")
    return source
