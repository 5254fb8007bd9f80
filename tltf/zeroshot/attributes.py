"""The class-attribute table of zero-shot learning: ``class,attr_1,…,attr_A``, one row per class, seen or not.

Values are numbers; a column outside [0, 1] is scaled to it (min-max), so a table of counts (``loops: 0, 1, 2``)
reads as soft attribute targets. Every problem is one line naming the file, the row and the column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tltf.errors import TltfError

MAX_BYTES = 16 * 1024 ** 2
MAX_CLASSES = 100_000


@dataclass
class AttributeTable:
    class_names: list[str]
    attribute_names: list[str]
    matrix: np.ndarray  # (classes, attributes) in [0, 1]

    def index(self, names, option: str = "--data") -> np.ndarray:
        """Rows of ``names`` in the table; a one-line error for a class the table lacks."""
        where = {c: i for i, c in enumerate(self.class_names)}
        missing = [str(n) for n in names if str(n) not in where]
        if missing:
            raise TltfError(f"{option}: class(es) {', '.join(missing[:5])} not in the --attributes table "
                            f"({len(self.class_names)} classes: {', '.join(self.class_names[:8])}"
                            f"{', …' if len(self.class_names) > 8 else ''})")
        return np.array([where[str(n)] for n in names], np.int64)


def read_attributes(path: str | Path, option: str = "--attributes") -> AttributeTable:
    from tltf.csv_table import read_table

    path = Path(path)
    header, rows = read_table(path, option, "class", "an attribute table", MAX_BYTES)
    at = header.index("class")
    names = [h for i, h in enumerate(header) if i != at]
    if not names:
        raise TltfError(f"{option} {path}: no attribute columns besides 'class'")
    if len(rows) > MAX_CLASSES:
        raise TltfError(f"{option} {path}: more than {MAX_CLASSES} classes")
    classes, values = [], []
    for line, row in enumerate(rows, start=2):
        name = row[at].strip()
        if not name:
            raise TltfError(f"{option} {path}: row {line} has no class name")
        try:
            values.append([float(cell) for i, cell in enumerate(row) if i != at])
        except ValueError:
            bad = next(h for i, (h, c) in enumerate(zip(header, row)) if i != at and not _number(c))
            raise TltfError(f"{option} {path}: row {line}, column {bad}: not a number") from None
        classes.append(name)
    seen = set()
    for name in classes:
        if name in seen:
            raise TltfError(f"{option} {path}: class {name} appears more than once")
        seen.add(name)
    if len(classes) < 3:
        raise TltfError(f"{option} {path}: {len(classes)} classes; zero-shot needs at least 2 seen and 1 unseen")
    matrix = np.asarray(values, np.float64)
    if not np.all(np.isfinite(matrix)):
        raise TltfError(f"{option} {path}: a value is not finite")
    low, high = matrix.min(axis=0), matrix.max(axis=0)
    outside = (low < 0) | (high > 1)
    matrix[:, outside] = (matrix[:, outside] - low[outside]) / np.maximum(high - low, 1e-12)[outside]
    signatures = {}
    for name, row in zip(classes, matrix.round(6)):
        other = signatures.setdefault(row.tobytes(), name)
        if other != name:
            raise TltfError(f"{option} {path}: class {name} has the same attributes as class {other}; no attribute "
                            "tells them apart")
    return AttributeTable(classes, names, matrix.astype(np.float32))


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
