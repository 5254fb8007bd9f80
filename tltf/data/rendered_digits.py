"""Synthetic labelled digits rendered from the machine's typefaces (Pillow), in MNIST's framing.

The source domain of a synthetic -> real shift: typeset digits (every TrueType/OpenType font found under the usual
font folders, each drawn at a random size, rotation, stroke thickness and offset), white on black, scaled into a
20x20 box centred in a 28x28 frame like MNIST's, lightly blurred. The real domain is handwriting (MNIST, UCI);
the two differ in stroke shape, not in framing or polarity.

>>> x, y = render_digits(per_class=20, seed=0)   # doctest: +SKIP
>>> x.shape, x.dtype, sorted(set(y.tolist()))     # doctest: +SKIP
((200, 28, 28), dtype('uint8'), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tltf.errors import TltfError

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "~/.fonts", "~/.local/share/fonts")
SKIP = ("math", "symbol", "emoji", "dingbat")  # faces whose digits are absent or not digit-shaped


def font_files(dirs=FONT_DIRS) -> list[Path]:
    """The ``.ttf``/``.otf`` files under ``dirs``, sorted (faces named like math/symbol fonts left out)."""
    found = set()
    for d in dirs:
        root = Path(d).expanduser()
        if root.is_dir():
            found.update(p for ext in ("*.ttf", "*.otf", "*.TTF", "*.OTF") for p in root.rglob(ext)
                         if not any(s in p.name.lower() for s in SKIP))
    return sorted(found)


def _render(font, digit: int, rng: np.random.Generator, size: int, box: int):
    from PIL import Image, ImageDraw, ImageFilter

    canvas = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(canvas).text((48, 48), str(digit), fill=255, font=font, anchor="mm",
                                stroke_width=int(rng.integers(0, 3)), stroke_fill=255)
    canvas = canvas.rotate(float(rng.uniform(-15, 15)), resample=Image.BILINEAR)
    bbox = canvas.getbbox()
    if bbox is None:
        return None
    glyph = canvas.crop(bbox)
    scale = box * float(rng.uniform(0.8, 1.0)) / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.size[0] * scale)), max(1, round(glyph.size[1] * scale))),
                         Image.BILINEAR)
    frame = Image.new("L", (size, size), 0)
    dx, dy = (int(v) for v in rng.integers(-1, 2, size=2))
    frame.paste(glyph, ((size - glyph.size[0]) // 2 + dx, (size - glyph.size[1]) // 2 + dy))
    return np.asarray(frame.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 0.7)))), np.uint8)


def render_digits(per_class: int = 300, size: int = 28, box: int = 20, seed: int = 0,
                  fonts: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: ``10 * per_class`` digits, uint8 ``(N, size, size)`` white on black, int64 labels, in class order.

    Each image takes a random font of ``fonts`` (default :func:`font_files`) at a random point size, stroke width
    0-2, rotation within +-15 degrees, glyph scaled to 80-100 % of ``box``, offset by up to a pixel and blurred
    (sigma 0-0.7). Raises :class:`TltfError` when no font is found.
    """
    from PIL import ImageFont

    paths = font_files() if fonts is None else [Path(f) for f in fonts]
    if not paths:
        raise TltfError(f"rendered digits: no .ttf/.otf font under {', '.join(FONT_DIRS)} (install fonts-dejavu)")
    rng = np.random.default_rng(seed)
    cache: dict = {}
    xs, ys = [], []
    for digit in range(10):
        made = 0
        while made < per_class:
            path, points = paths[int(rng.integers(len(paths)))], int(rng.integers(36, 64))
            if (path, points) not in cache:
                cache[path, points] = ImageFont.truetype(str(path), points)
            image = _render(cache[path, points], digit, rng, size, box)
            if image is None:
                continue
            xs.append(image)
            ys.append(digit)
            made += 1
    return np.stack(xs), np.asarray(ys, np.int64)
