"""The two image sets a drift check compares, read from ``--data``-style specs, and their seeded subsamples.

A spec is what ``--data`` takes elsewhere: an image folder, a ``.npz``, ``tfds:NAME[:SPLIT]`` or ``builtin:NAME``
(its training split: the images a model was or would be trained on). A folder may also be unlabelled: images in
any layout, without class subfolders. The new data is always read label-free (a drift check never needs its
labels), so a folder of new images is every image under it, and the contact sheet can name their files. The
reference keeps its labels when it has them (class folders, arrays, datasets): label-shift estimation needs them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tltf.errors import TltfError


@dataclass
class ImageSet:
    """The images of one spec: a :class:`tltf.data.Split`, its ``class_names`` (``None``: unlabelled) and, for
    folders, the image ``files`` in the split's order (``None`` when not known)."""

    spec: str
    split: object  # tltf.data.Split (not imported at module level: TensorFlow loads lazily)
    class_names: list[str] | None
    files: list[str] | None = None

    @property
    def labelled(self) -> bool:
        return self.class_names is not None and bool((self.split.selected_labels >= 0).all())


def load_images(spec: str, option: str, data_dir: str | None = None, labelled: bool = True) -> ImageSet:
    """The images of ``spec``; ``labelled=False`` reads a folder as unlabelled images whatever its layout.

    A labelled read of a folder that is not a class-folder dataset (no class subfolders, or a single one) falls
    back to reading it unlabelled."""
    from tltf.data import load_source
    from tltf.data.sources import folder_source

    text = str(spec)
    path = Path(text)
    if path.is_dir():
        if labelled:
            try:
                source = folder_source(path, option)
                return ImageSet(text, source.train, list(source.class_names))
            except TltfError:
                pass  # not class folders with at least two classes: plain images
        return _unlabelled(path, option)
    source = load_source(text, data_dir, option)
    return ImageSet(text, source.train, list(source.class_names))


def _unlabelled(root: Path, option: str) -> ImageSet:
    from tltf.data.sources import unlabelled_folder

    split = unlabelled_folder(root, option)
    return ImageSet(str(root), split, None, [str(f) for f in split.files])


def subsample(images: ImageSet, max_samples: int | None, rng: np.random.Generator) -> tuple[ImageSet, np.ndarray]:
    """At most ``max_samples`` images drawn uniformly without replacement (kept in their original order), and
    their indices into ``images``; all of them when there are no more than that."""
    n = len(images.split)
    if max_samples is None or n <= max_samples:
        return images, np.arange(n)
    picked = np.sort(rng.choice(n, size=max_samples, replace=False))
    files = [images.files[i] for i in picked] if images.files is not None else None
    return ImageSet(images.spec, images.split.select(picked), images.class_names, files), picked
