"""``builtin:shapes``: a generated image dataset with real visual structure, for a first run with no download.

Circles, squares and triangles of random size, position, rotation and colour on noisy, graded backgrounds. The
class is carried by shape alone (colours are drawn independently of it), so a model has to learn edges and corners.

>>> x, y = shapes(6, size=32, seed=0)
>>> x.shape, x.dtype, sorted(set(y.tolist()))
((6, 32, 32, 3), dtype('uint8'), [0, 1, 2])
"""

from __future__ import annotations

import numpy as np

from tltf.data.sources import Source, array_split
from tltf.errors import TltfError

SHAPES = ("circle", "square", "triangle")


def _mask(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    r = rng.uniform(0.18, 0.34) * size
    cx, cy = rng.uniform(r, size - r, 2)
    theta = rng.uniform(0, 2 * np.pi)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    if kind == "circle":
        return u ** 2 + v ** 2 <= r ** 2
    if kind == "square":
        s = r / np.sqrt(2) * 1.25
        return (np.abs(u) <= s) & (np.abs(v) <= s)
    # triangle: inside three half-planes of an equilateral triangle with circumradius r
    inside = np.ones_like(u, bool)
    for k in range(3):
        a = 2 * np.pi * k / 3
        inside &= (u * np.cos(a) + v * np.sin(a)) <= r / 2
    return inside


def shapes(n: int, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (classes balanced, in random order) of ``size`` x ``size`` and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.resize(np.arange(len(SHAPES)), n)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    ramp = np.linspace(0, 1, size, dtype=np.float32)
    for i, label in enumerate(labels):
        bg = rng.uniform(0, 255, 3).astype(np.float32)
        grad = rng.uniform(-60, 60, 3).astype(np.float32)
        direction = ramp[:, None] if rng.random() < 0.5 else ramp[None, :]
        image = bg + direction[..., None] * grad
        fg = rng.uniform(0, 255, 3).astype(np.float32)
        while np.abs(fg - bg).sum() < 150:  # keep the shape visible
            fg = rng.uniform(0, 255, 3).astype(np.float32)
        mask = _mask(SHAPES[label], size, rng)
        image = np.where(mask[..., None], fg, image)
        image += rng.normal(0, 12, image.shape).astype(np.float32)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)


BUILTINS = {"shapes": (600, 150)}  # train(+val) images, test images


def builtin_source(name: str, option: str = "--data") -> Source:
    """``builtin:shapes``: 600 training images (validation is split off) and a separate 150-image test set."""
    if name not in BUILTINS:
        raise TltfError(f"{option} builtin:{name}: unknown built-in dataset (available: {', '.join(BUILTINS)})")
    n_train, n_test = BUILTINS[name]
    x, y = shapes(n_train, seed=0)
    xt, yt = shapes(n_test, seed=1)
    return Source(name, list(SHAPES), array_split(x, y, f"builtin:{name}"),
                  test=array_split(xt, yt, f"builtin:{name} test"))
