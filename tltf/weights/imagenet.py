"""The 1000 ImageNet-1k class names, in the standard index order of torchvision and Keras, read offline.

The names come from the installed ``tensorflow_datasets`` package (a dependency of tltf): its SI-Score module
carries the full list (``IMAGENET_LABELS_LIST``, "tench, Tinca tinca" … "toilet tissue, toilet paper, bathroom
tissue"). The source file is parsed with :mod:`ast` -- nothing is imported or executed. If a future
``tensorflow_datasets`` drops that list, the WordNet ids of its ``imagenet2012/labels.txt`` (same order, e.g.
``n01440764``) are used instead; if neither is there, :func:`imagenet_class_names` raises :class:`TltfError`.

>>> names = imagenet_class_names()          # doctest: +SKIP
>>> len(names), names[0], names[207]        # doctest: +SKIP
(1000, 'tench, Tinca tinca', 'golden retriever')
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path

from tltf.errors import TltfError

NUM_CLASSES = 1000
_NAMES_FILE = ("datasets", "siscore", "labels.py")
_NAMES_VARIABLE = "IMAGENET_LABELS_LIST"
_WNIDS_FILES = (("datasets", "imagenet2012", "labels.txt"), ("image_classification", "imagenet2012_labels.txt"))


def _tfds_root() -> Path | None:
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _names_from_source(path: Path) -> list[str] | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == _NAMES_VARIABLE
                                                for t in node.targets):
            try:
                names = ast.literal_eval(node.value)
            except ValueError:
                return None
            if isinstance(names, list) and len(names) == NUM_CLASSES and all(isinstance(n, str) for n in names):
                return names
    return None


def _wnids(path: Path) -> list[str] | None:
    try:
        ids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError:
        return None
    return ids if len(ids) == NUM_CLASSES else None


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 class names (human-readable when available, else WordNet ids), index ``i`` = ImageNet class ``i``."""
    root = _tfds_root()
    if root is not None:
        names = _names_from_source(root.joinpath(*_NAMES_FILE))
        if names:
            return list(names)
        for parts in _WNIDS_FILES:
            ids = _wnids(root.joinpath(*parts))
            if ids:
                return ids
    raise TltfError("ImageNet class names: not found in the installed tensorflow_datasets package "
                    "(pip install tensorflow-datasets)")
