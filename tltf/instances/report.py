"""``tltf instances``' outputs: ``scores.csv`` (every training example, most harmful first) and ``harmful.png`` (a
contact sheet of the worst images with their given and predicted labels). Both are written atomically."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from tltf.atomic import replacing
from tltf.instances.scoring import InstanceScores

COLUMNS = ("file", "label", "predicted", "score")
SHEET_COLUMNS = 8


def write_scores_csv(path: str | Path, scores: InstanceScores) -> Path:
    """``file,label,predicted,score`` per example, most harmful first (labels as class names)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in scores.rows():
        writer.writerow({**row, "score": f"{row['score']:.6g}"})
    with replacing(path, ".csv") as tmp:
        tmp.write_text(buffer.getvalue(), encoding="utf-8")
    return Path(path)


def images_at(split, positions: np.ndarray) -> list[np.ndarray]:
    """The uint8 images at ``positions`` of ``split`` (a :class:`tltf.data.Split`), in the order given."""
    positions = np.asarray(positions, np.int64)
    if not len(positions):
        return []
    ascending = np.sort(positions)  # some sources (TFDS) yield a selection in index order, whatever was asked
    images = [np.asarray(image) for image, _ in split.select(ascending).dataset()]
    found = dict(zip(ascending.tolist(), images))
    return [found[p] for p in positions.tolist() if p in found]


def contact_sheet(path: str | Path, images: list[np.ndarray], captions: list[str], title: str = "") -> Path:
    """A grid of ``images`` with a caption under each, saved as PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, len(images))
    cols = min(SHEET_COLUMNS, count)
    rows = math.ceil(count / cols)
    height = 2.0 * rows + (0.5 if title else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, height), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        image = np.asarray(image)
        grey = image.ndim == 3 and image.shape[-1] == 3 and np.ptp(image.astype(np.int16), axis=-1).max() == 0
        ax.imshow(image[..., 0] if grey else image, cmap="gray" if grey else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
    if not images:
        axes[0, 0].text(0.5, 0.5, "no images", ha="center", va="center")
    if title:
        fig.suptitle(title, fontsize=8)
    try:
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - (1.0 if title else 0.5) / height,
                            wspace=0.08, hspace=0.5)
        with replacing(path, ".png") as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return Path(path)


def _short(name: str, width: int = 20) -> str:
    name = Path(name).name if ("/" in name or "\\" in name) else name
    return name if len(name) <= width else "..." + name[-(width - 3):]


def write_contact_sheet(path: str | Path, scores: InstanceScores, split, top: int = 64) -> Path:
    """``harmful.png``: the ``top`` most harmful images of ``split`` (the split that was scored), each captioned
    ``rank. given -> predicted``, its file (or index) and score."""
    worst = scores.harmful(top)
    images = images_at(split, worst)
    names = scores.class_names
    captions = [f"{rank}. {names[scores.labels[i]]} -> {names[scores.predicted[i]]}\n{_short(scores.names[i])}\n"
                f"{scores.scores[i]:.3g}" for rank, i in enumerate(worst, 1)]
    title = (f"The {len(worst)} most harmful of {len(scores)} training images: given -> predicted label, "
             "file, score\n(score: predicted drop of the validation loss without the image; > 0: removing it helps)")
    return contact_sheet(path, images, captions[:len(images)], title)
