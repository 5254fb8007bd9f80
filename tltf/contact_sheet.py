"""Contact sheets: a grid of images with a caption under each (``tltf instances``' ``harmful.png``, ``tltf
drift``'s ``most_different.png``), and the images of a split at given positions to put on one."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tltf.atomic import replacing


def images_at(split, positions: np.ndarray) -> list[np.ndarray]:
    """The uint8 images at ``positions`` of ``split`` (a :class:`tltf.data.Split`), in the order given."""
    positions = np.asarray(positions, np.int64)
    if not len(positions):
        return []
    ascending = np.sort(positions)  # some sources (TFDS) yield a selection in index order, whatever was asked
    images = [np.asarray(image) for image, _ in split.select(ascending).dataset()]
    found = dict(zip(ascending.tolist(), images))
    return [found[p] for p in positions.tolist() if p in found]


def contact_sheet(path: str | Path, images: list[np.ndarray], captions: list[str], title: str = "",
                  columns: int = 8) -> Path:
    """A grid of ``images`` (uint8, any sizes; grey ones drawn grey) with a caption under each, ``columns`` wide,
    written atomically as PNG (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(1, len(images))
    cols = min(columns, count)
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
