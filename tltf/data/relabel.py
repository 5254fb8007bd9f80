"""A source's labels in another class list: ``relabel(source, names)`` maps each class to its place in ``names``
(a superset of the source's classes, e.g. a zero-shot attribute table's), images untouched."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tltf.data.sources import Source, Split


def _relabel_split(split: Split | None, table: np.ndarray) -> Split | None:
    if split is None:
        return None
    lookup = tf.constant(table, tf.int64)

    def make(indices, _make=split.make):
        return _make(indices).map(lambda image, label: (image, tf.gather(lookup, tf.cast(label, tf.int64))))

    return Split(table[np.asarray(split.labels, np.int64)], make, split.indices, split.image_bytes)


def relabel(source: Source, class_names: list[str], rows: np.ndarray) -> Source:
    """``source`` with ``class_names`` as its classes; ``rows[k]`` is the new index of the source's class ``k``."""
    rows = np.asarray(rows, np.int64)
    return Source(source.name, list(class_names), _relabel_split(source.train, rows),
                  _relabel_split(source.val, rows), _relabel_split(source.test, rows))
