"""The two image sets a drift check compares, read from ``--data``-style specs, and their seeded subsamples.

A spec is what ``--data`` takes elsewhere: an image folder, a ``.npz``, ``tfds:NAME[:SPLIT]`` or ``builtin:NAME``
(its training split: the images a model was or would be trained on). A folder may also be unlabelled: images in
any layout, without class subfolders. The new data is always read label-free (a drift check never needs its
labels), so a folder of new images is every image under it, and the contact sheet can name their files. The
reference keeps its labels when it has them (class folders, arrays, datasets): label-shift estimation needs them.

With ``runtime=True`` (``tltf drift --model FILE.onnx``) an image folder is read without TensorFlow: scanned by
:mod:`tltf.data.folders` into a :class:`FileSplit` -- the same files, in the same order, with the same labels, as
the training pipeline's folder source gives -- and decoded and resized by :mod:`tltf.runtime.images` (Pillow), with
the pixels rounded to whole numbers as the training pipeline rounds them (:func:`pixel_batches`). The other specs
(``.npz``, a CSV manifest, ``builtin:``, ``tfds:``) are read by the training pipeline, so they load the training
stack (:func:`tltf.extras.training_stack`), or stop with a one-line error that says so where it is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tltf.errors import TltfError


@dataclass
class ImageSet:
    """The images of one spec: a :class:`tltf.data.Split` (or a TensorFlow-free :class:`FileSplit`), its
    ``class_names`` (``None``: unlabelled) and, for folders, the image ``files`` in the split's order (``None``
    when not known)."""

    spec: str
    split: object  # tltf.data.Split or FileSplit (tltf.data.Split is not imported here: TensorFlow loads lazily)
    class_names: list[str] | None
    files: list[str] | None = None

    @property
    def labelled(self) -> bool:
        return self.class_names is not None and bool((self.split.selected_labels >= 0).all())


@dataclass
class FileSplit:
    """Image files and their labels (-1: unlabelled), read without TensorFlow: the part of
    :class:`tltf.data.Split` a drift check uses (``len``, ``selected_labels``, ``select``, and ``dataset()``, the
    decoded uint8 images with their labels, which :func:`tltf.contact_sheet.images_at` reads)."""

    labels: np.ndarray
    files: np.ndarray
    indices: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels if self.indices is None else self.indices)

    @property
    def selected(self) -> np.ndarray:
        return np.arange(len(self.labels)) if self.indices is None else self.indices

    @property
    def selected_labels(self) -> np.ndarray:
        return self.labels[self.selected]

    def select(self, indices: np.ndarray) -> "FileSplit":
        return FileSplit(self.labels, self.files, self.selected[np.asarray(indices)])

    def dataset(self):
        """``(uint8 image (H, W, 3), label)`` of each selected file, decoded as the training pipeline does."""
        from tltf.runtime.images import check_image, decode

        for i in self.selected:
            check_image(str(self.files[i]))
            yield decode(str(self.files[i])), self.labels[i]


def load_images(spec: str, option: str, data_dir: str | None = None, labelled: bool = True,
                runtime: bool = False) -> ImageSet:
    """The images of ``spec``; ``labelled=False`` reads a folder as unlabelled images whatever its layout;
    ``runtime=True`` reads a folder without TensorFlow (see the module docstring).

    A labelled read of a folder that is not a class-folder dataset (no class subfolders, or a single one) falls
    back to reading it unlabelled."""
    text = str(spec)
    path = Path(text)
    if path.is_dir():
        if labelled:
            try:
                return _class_folders(path, option, runtime)
            except TltfError:
                pass  # not class folders with at least two classes: plain images
        return _unlabelled(path, option, runtime)
    if runtime:
        _training_stack_for(text, option)
    from tltf.data import load_source

    source = load_source(text, data_dir, option)
    return ImageSet(text, source.train, list(source.class_names))


def _training_stack_for(spec: str, option: str) -> None:
    """Load the training stack to read ``spec`` (not an image folder) on the inference runtime; a one-line error
    where it is missing, or where ``spec`` names no file at all."""
    from tltf.extras import TRAIN_EXTRA, training_stack

    named = spec.startswith(("builtin:", "tfds:"))
    if not named and not Path(spec).exists() and not Path(spec.rsplit(":", 1)[0]).exists():
        raise TltfError(f"{option} {spec}: no such file or folder")
    try:
        training_stack(f"{option} {spec}")
    except TltfError:
        raise TltfError(f"{option} {spec}: only image folders are read without the training stack (TensorFlow); a "
                        f".npz, CSV manifest, builtin: or tfds: spec needs it: {TRAIN_EXTRA}") from None


def _class_folders(root: Path, option: str, runtime: bool) -> ImageSet:
    """A class-folder dataset's training images (its ``train/`` split where it has one), as ``--data`` reads it."""
    if not runtime:
        from tltf.data.sources import folder_source

        source = folder_source(root, option)
        return ImageSet(str(root), source.train, list(source.class_names))
    from tltf.data.folders import check_class_names, scan, split_dirs

    train = split_dirs(root)["train"]
    names, files, labels = scan(train if train is not None else root, None, option)
    check_class_names(names, option, root)
    return ImageSet(str(root), FileSplit(labels, np.asarray(files)), list(names))


def _unlabelled(root: Path, option: str, runtime: bool) -> ImageSet:
    if runtime:
        from tltf.data.folders import image_files

        files = image_files(root)
        if not files:
            raise TltfError(f"{option} {root}: no images found")
        split = FileSplit(np.full(len(files), -1, np.int32), np.asarray(files))
    else:
        from tltf.data.sources import unlabelled_folder

        split = unlabelled_folder(root, option)
    return ImageSet(str(root), split, None, [str(f) for f in split.files])


class _PixelBatches:
    """Re-iterable ``(float32 pixels (B, H, W, 3), int32 labels (B,))`` batches of a :class:`FileSplit`: each image
    decoded and resized by :mod:`tltf.runtime.images`, then rounded to whole numbers as the training pipeline
    stores its resized images (uint8)."""

    def __init__(self, split: FileSplit, size: tuple[int, int], batch_size: int):
        self.split, self.size, self.batch_size = split, size, max(1, int(batch_size))

    def __iter__(self):
        from tltf.runtime.images import load_image

        picked = self.split.selected
        for start in range(0, len(picked), self.batch_size):
            chunk = picked[start:start + self.batch_size]
            pixels = np.stack([np.round(load_image(str(self.split.files[i]), self.size)) for i in chunk])
            yield pixels.astype(np.float32), self.split.labels[chunk].astype(np.int32)


def pixel_batches(images: ImageSet, size: tuple[int, int], batch_size: int = 32):
    """Re-iterable ``(pixels, labels)`` batches of ``images`` at ``size``, as the model takes them: a
    :class:`FileSplit` through Pillow (no TensorFlow), a :class:`tltf.data.Split` through the training pipeline."""
    size = (int(size[0]), int(size[1]))
    if isinstance(images.split, FileSplit):
        return _PixelBatches(images.split, size, batch_size)
    from tltf.data import make_pipeline

    return make_pipeline(images.split, size, batch_size, cache=False)


def subsample(images: ImageSet, max_samples: int | None, rng: np.random.Generator) -> tuple[ImageSet, np.ndarray]:
    """At most ``max_samples`` images drawn uniformly without replacement (kept in their original order), and
    their indices into ``images``; all of them when there are no more than that."""
    n = len(images.split)
    if max_samples is None or n <= max_samples:
        return images, np.arange(n)
    picked = np.sort(rng.choice(n, size=max_samples, replace=False))
    files = [images.files[i] for i in picked] if images.files is not None else None
    return ImageSet(images.spec, images.split.select(picked), images.class_names, files), picked
