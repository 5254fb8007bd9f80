"""A CSV manifest as a data source: ``--data labels.csv`` (one label column) or ``--data labels.csv:COLUMN``.

The CSV has a ``file`` column (image paths, relative to the CSV's folder unless absolute) and one column per
label; an optional ``split`` column (``train``, ``val``, ``test``) splits it. Class names are the label column's
distinct values, sorted. Every problem is one line naming the file, the row or the column.

Several columns joined by ``+`` (``labels.csv:digit+parity``) read every image's labels at once, as one joint
label per combination of values (``"3|odd"``) and the source's ``tasks`` (:mod:`tltf.data.tasks`): the data of a
multitask run (``tltf fit --tasks digit,parity``).

>>> source = manifest_source("photos/labels.csv:species")   # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tltf.errors import TltfError

MAX_BYTES = 256 * 1024 ** 2
SPLITS = ("train", "val", "test")


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``"a.csv:col"`` -> ``(Path("a.csv"), "col")``; ``"a.csv"`` -> ``(Path("a.csv"), None)``."""
    text = str(spec)
    head, sep, column = text.rpartition(":")
    if sep and head.lower().endswith(".csv"):
        return Path(head), column
    return Path(text), None


def is_manifest(spec: str) -> bool:
    return split_spec(spec)[0].suffix.lower() == ".csv"


def read_manifest(path: Path, option: str = "--data") -> tuple[list[str], list[dict]]:
    """``(header, rows)`` of the CSV (rows as ``{column: cell}``), checked for size, a ``file`` column and cell
    counts."""
    from tltf.csv_table import read_table

    header, table = read_table(path, option, "file", "a manifest", MAX_BYTES)
    if not table:
        raise TltfError(f"{option} {path}: no rows")
    return header, [{h: cell.strip() for h, cell in zip(header, row)} for row in table]


def label_columns(header: list[str]) -> list[str]:
    return [h for h in header if h not in ("file", "split")]


def manifest_source(spec: str, option: str = "--data"):
    """The :class:`tltf.data.Source` a manifest describes (see the module docstring)."""
    from tltf.data.folders import readable
    from tltf.data.sources import Source, check_classes, file_split
    from tltf.runtime.images import is_image_file

    path, column = split_spec(spec)
    header, rows = read_manifest(path, option)
    labels = label_columns(header)
    if column is None:
        if len(labels) != 1:
            raise TltfError(f"{option} {spec}: {len(labels)} label columns ({', '.join(labels[:6]) or 'none'}); "
                            f"choose one as {path}:COLUMN")
        column = labels[0]
    columns = [column] if column in labels or "+" not in column else [c.strip() for c in column.split("+")]
    for name in columns:
        if name not in labels:
            raise TltfError(f"{option} {spec}: no label column {name!r} (columns: {', '.join(labels[:8])})")
    if len(set(columns)) != len(columns):
        raise TltfError(f"{option} {spec}: a label column is named twice")
    root = path.parent
    files, values, splits = [], [], []
    for line, row in enumerate(rows, start=2):
        empty = next((name for name in ("file", *columns) if not row[name]), None)
        if empty:
            raise TltfError(f"{option} {path}: row {line} has an empty {empty}")
        file = Path(row["file"]) if Path(row["file"]).is_absolute() else root / row["file"]
        if not file.is_file():
            raise TltfError(f"{option} {path}: row {line}: {file} does not exist")
        if not is_image_file(file):
            raise TltfError(f"{option} {path}: row {line}: {file} is not an image file (.jpg, .png, …)")
        split = row.get("split", "train").lower() or "train"
        if split not in SPLITS:
            raise TltfError(f"{option} {path}: row {line}: split {split!r} (choose train, val or test)")
        files.append(str(file))
        values.append(tuple(row[name] for name in columns))
        splits.append(split)
    keep = readable(files, path)  # unreadable or oversized images skipped with a warning, as in folders
    if not keep:
        raise TltfError(f"{option} {path}: no readable images")
    files, values, splits = [files[i] for i in keep], [values[i] for i in keep], [splits[i] for i in keep]
    for t, name in enumerate(columns):
        seen = {v[t] for v, s in zip(values, splits) if s == "train"}
        unknown = sorted({v[t] for v in values if v[t] not in seen})
        if unknown:
            raise TltfError(f"{option} {path}: {name} {unknown[0]!r} appears in val/test rows but not in train")
    tasks = None
    if len(columns) == 1:
        class_names = sorted({v[0] for v in values})
        index = {name: i for i, name in enumerate(class_names)}
        labels_arr = np.array([index[v[0]] for v in values], np.int32)
    else:
        from tltf.data.tasks import joint_labels

        tasks, labels_arr = joint_labels(columns, values, [s == "train" for s in splits])
        class_names = tasks.joint_names()
        for name, classes in zip(columns, tasks.classes):
            if len(classes) < 2:
                raise TltfError(f"{option} {path}: column {name} has a single class ({classes[0]}); a task needs "
                                "at least two")
    splits_arr = np.array(splits)
    parts = {}
    for name in SPLITS:
        keep = np.flatnonzero(splits_arr == name)
        if len(keep):
            parts[name] = file_split([files[i] for i in keep], labels_arr[keep])
    if "train" not in parts:
        raise TltfError(f"{option} {path}: no train rows")
    source = Source(f"{path.stem}:{column}", class_names, parts["train"], parts.get("val"), parts.get("test"),
                    tasks=tasks)
    check_classes(source, option, path)
    return source
