"""``--target-data`` for domain adaptation: the unlabelled target split, and its labelled evaluation split when
``--target-labels-for-eval`` allows the labels to be read (only ever to measure ``target_accuracy``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tltf.data import load_source
from tltf.data.sources import Split, unlabelled_folder
from tltf.errors import TltfError


def load_target(spec: str, class_names: list[str], with_labels: bool, data_dir: str | None = None):
    """``(adapt_split, eval_split | None)`` for ``--target-data``; target labels map onto the source classes."""
    path = Path(str(spec))
    if path.is_dir() and not _has_class_dirs(path):
        if with_labels:
            raise TltfError(f"--target-labels-for-eval: {path} has no class folders, so no labels to evaluate with")
        return unlabelled_folder(path), None
    source = load_source(spec, data_dir, option="--target-data")
    if not with_labels:
        return source.train, None
    missing = [c for c in source.class_names if c not in class_names]
    if missing:
        raise TltfError(f"--target-data {spec}: class {missing[0]!r} is not one of the source classes "
                        f"({', '.join(class_names[:10])})")
    mapping = np.array([class_names.index(c) for c in source.class_names], dtype=np.int32)

    def remap(split: Split | None) -> Split | None:
        if split is None:
            return None
        make = split.make

        def make_mapped(indices):
            import tensorflow as tf

            table = tf.constant(mapping)
            return make(indices).map(lambda im, y: (im, tf.gather(table, y)))

        return Split(mapping[split.labels], make_mapped, split.indices, split.image_bytes)

    train = remap(source.train)
    return train, remap(source.test) or train


def _has_class_dirs(path: Path) -> bool:
    return any(d.is_dir() and not d.name.startswith(".") for d in path.iterdir())
