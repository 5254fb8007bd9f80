"""The run folder's reports: ``history.csv`` reading, ``metrics.json``, the training-curve PNG, confusion tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from tltf.atomic import replacing


def write_json(path: str | Path, data) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    with replacing(path, ".part") as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _number(text):
    """A CSVLogger cell: a float, or None where the epoch had no such value (empty, or Keras' ``NA``)."""
    return None if text in ("", None, "NA") else float(text)


def read_history(path: str | Path) -> list[dict]:
    """Rows of a Keras ``CSVLogger`` file, one per epoch (a re-run epoch after a resume keeps its last row)."""
    path = Path(path)
    if not path.exists():
        return []
    rows: dict[int, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(row["epoch"])
            except (KeyError, ValueError):
                continue
            rows[epoch] = {k: _number(v) if k != "epoch" else v for k, v in row.items()}
            rows[epoch]["epoch"] = epoch
    return [rows[e] for e in sorted(rows)]


def plot_history(history: list[dict], boundaries: list[tuple[int, str]], path: str | Path, title: str = "") -> None:
    """Loss and accuracy curves (train and validation) with the stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] + 1 for r in history]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = [r.get(key) for r in history]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, marker="o", ms=3, label=key)
        for first_epoch, name in boundaries:
            ax.axvline(first_epoch + 0.5, color="grey", lw=0.8, ls=":")
            ax.text(first_epoch + 0.6, ax.get_ylim()[1], name, fontsize=8, va="top", color="dimgrey")
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (np.asarray(true), np.asarray(pred)), 1)
    return cm


def format_confusion(cm: np.ndarray, names: list[str]) -> str:
    width = max(6, *(len(n) for n in names)) + 1
    lines = ["true \\ pred".ljust(width) + "".join(n[:width - 1].rjust(width) for n in names)]
    for name, row in zip(names, cm):
        lines.append(name[:width - 1].ljust(width) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Lay out ``fig``, write it atomically as PNG to ``path`` and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with replacing(path, ".png") as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
