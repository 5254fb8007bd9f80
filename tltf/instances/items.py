"""What to call the examples of a :class:`tltf.data.Split` in a report: the image file, or ``train[17]``.

A split made from image files (a folder or a CSV manifest) carries their paths (``Split.files``), so a report
names each image exactly as it lies on disk. Array and TFDS splits have no files: their examples are named by
split and index in the source's array (``train[17]`` is ``x[17]`` of the ``.npz``), which stays right after a
validation hold-out.
"""

from __future__ import annotations

import numpy as np


def source_files(split) -> np.ndarray | None:
    """The file paths of *all* of ``split``'s source examples (before selection), or None for array data."""
    files = getattr(split, "files", None)
    return None if files is None else np.asarray(files)


def source_indices(split) -> np.ndarray:
    """The index of each selected example in the source's array."""
    return np.arange(len(split.labels)) if split.indices is None else np.asarray(split.indices)


def item_names(split, prefix: str = "train") -> list[str]:
    """One name per selected example of ``split``, in order: its file, or ``PREFIX[INDEX]``."""
    files = source_files(split)
    indices = source_indices(split)
    if files is not None:
        return [str(f) for f in files[indices]]
    return [f"{prefix}[{int(i)}]" for i in indices]

