"""A contact sheet: a grid of images, each with a caption under it (``most_different.png`` of ``tltf drift``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def contact_sheet(images: list[np.ndarray], captions: list[str], path: str | Path, columns: int = 4,
                  title: str = "", cell_inches: float = 2.0) -> Path:
    """Write ``images`` (uint8 ``(H, W, 3)`` of any sizes) in a grid with ``captions`` under them as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tltf.reporting import save_figure

    n = max(1, len(images))
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell_inches, rows * (cell_inches + 0.3)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, caption in zip(axes.ravel(), images, captions):
        ax.imshow(np.asarray(image, np.uint8), interpolation="nearest" if max(image.shape[:2]) < 64 else "antialiased")
        ax.set_title(caption, fontsize=8, y=-0.16)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
