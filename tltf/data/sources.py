"""Where images come from: image folders, ``.npz`` arrays, TensorFlow Datasets, the built-in example.

Every source becomes a :class:`Split` per subset (train / val / test): integer labels known up front (so that
validation splits can be stratified) and a way to produce a ``tf.data.Dataset`` of ``(uint8 image (H, W, 3),
int32 label)`` for any subset of indices. Decoding runs in parallel inside tf.data.

An image folder is scanned before anything is decoded (:mod:`tltf.data.folders`, which needs no TensorFlow): a
file Pillow cannot read is skipped, and so is an image over :data:`tltf.runtime.images.MAX_IMAGE_PIXELS`, each
with a warning that names a file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from tltf.data.folders import check_class_names, image_files, scan, split_dirs
from tltf.data.images import decode
from tltf.errors import TltfError

AUTOTUNE = tf.data.AUTOTUNE


@dataclass
class Split:
    """One subset of a source: ``labels`` and a factory for the dataset of ``(image, label)`` at given indices;
    ``files``: for an image folder, the path of each of the source's examples (all of them, before any selection,
    aligned with ``labels``), None for arrays and TFDS."""

    labels: np.ndarray
    make: Callable[[np.ndarray], tf.data.Dataset]
    indices: np.ndarray | None = None
    image_bytes: int = 0  # a rough size of one decoded image, to decide about caching
    files: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels if self.indices is None else self.indices)

    @property
    def selected_labels(self) -> np.ndarray:
        return self.labels if self.indices is None else self.labels[self.indices]

    def select(self, indices: np.ndarray) -> "Split":
        base = np.arange(len(self.labels)) if self.indices is None else self.indices
        return Split(self.labels, self.make, base[np.asarray(indices)], self.image_bytes, self.files)

    def dataset(self) -> tf.data.Dataset:
        indices = np.arange(len(self.labels)) if self.indices is None else self.indices
        return self.make(indices)


@dataclass
class Source:
    """A dataset: class names and its splits (``val`` / ``test`` may be missing)."""

    name: str
    class_names: list[str]
    train: Split
    val: Split | None = None
    test: Split | None = None
    tasks: object = None  # a manifest read with several label columns: tltf.data.tasks.TaskLabels


# --- image folders --------------------------------------------------------------------------------------------

def file_split(files: list[str], labels: np.ndarray) -> Split:
    """A split of image files (decoded in parallel when read) and their labels."""
    paths = np.asarray(files)

    def make(indices: np.ndarray) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((paths[indices], labels[indices]))
        ds = ds.map(lambda p, y: (decode(tf.io.read_file(p)), y), num_parallel_calls=AUTOTUNE)
        return ds.ignore_errors()  # a file that passed the scan but fails to decode is dropped, not fatal

    return Split(labels, make, image_bytes=256 * 256 * 3, files=paths)


def folder_source(path: str | Path, option: str = "--data") -> Source:
    """``class_name/*.jpg|png`` under ``path``, or ``train/``, ``val/``, ``test/`` splits of that layout."""
    root = Path(path)
    if not root.is_dir():
        raise TltfError(f"{option} {root}: no such folder")
    dirs = split_dirs(root)
    if dirs["train"] is not None:
        names, files, labels = scan(dirs["train"], None, option)
        splits = {}
        for key in ("val", "test"):
            if dirs[key] is not None:
                _, f, y = scan(dirs[key], names, option)
                splits[key] = file_split(f, y)
        source = Source(root.name, names, file_split(files, labels), splits.get("val"), splits.get("test"))
    else:
        names, files, labels = scan(root, None, option)
        source = Source(root.name, names, file_split(files, labels))
    check_classes(source, option, root)
    return source


def unlabelled_folder(path: str | Path, option: str = "--target-data") -> Split:
    """All images under ``path`` (any layout) with label -1: unlabelled target data for domain adaptation."""
    root = Path(path)
    if not root.is_dir():
        raise TltfError(f"{option} {root}: no such folder")
    files = image_files(root)
    if not files:
        raise TltfError(f"{option} {root}: no images found")
    return file_split(files, np.full(len(files), -1, np.int32))


def check_classes(source: Source, option: str, where) -> None:
    """A one-line error for a source with fewer than two classes."""
    check_class_names(source.class_names, option, where)


# --- numpy arrays ---------------------------------------------------------------------------------------------

MAX_CLASSES = 100_000  # labels without class_names: the largest one says how many classes there are
_CHUNK = 512  # images per step when checking and converting float arrays: temporaries stay a few MB


def _chunks(n: int):
    return ((i, min(i + _CHUNK, n)) for i in range(0, n, _CHUNK))


def _as_images(x: np.ndarray, where: str, name: str = "x") -> np.ndarray:
    """``x`` as uint8 RGB ``(N, H, W, 3)``; a one-line error for anything but finite numbers of an image shape."""
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise TltfError(f"{where}: {name} must hold pixel values (numbers), got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise TltfError(f"{where}: {name}: images must be (N, H, W), (N, H, W, 1) or (N, H, W, 3), got {x.shape}")
    if x.dtype.kind == "f":
        values = images = 0
        for i, j in _chunks(len(x)):
            bad = ~np.isfinite(x[i:j]).reshape(j - i, -1)
            values += int(bad.sum())
            images += int(bad.any(axis=1).sum())
        if values:
            raise TltfError(f"{where}: {name} has {values} non-finite pixel value{'s' if values != 1 else ''} "
                            f"(NaN or inf) in {images} image{'s' if images != 1 else ''}")
    if x.dtype != np.uint8:
        scale = np.float32(255.0 if x.size and x.max() <= 1 else 1.0)
        out = np.empty(x.shape, np.uint8)
        for i, j in _chunks(len(x)):
            out[i:j] = np.clip(np.round(x[i:j].astype(np.float32) * scale), 0, 255).astype(np.uint8)
        x = out
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return x


def _as_labels(y: np.ndarray, where: str, name: str = "y", num_classes: int | None = None) -> np.ndarray:
    """``y`` as int32 class indices ``(N,)``: integers (whole floats pass), in ``0..num_classes - 1`` when given."""
    y = np.asarray(y)
    if y.dtype.kind not in "biuf":
        raise TltfError(f"{where}: {name} must hold integer class labels, got dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] > 1:
        raise TltfError(f"{where}: {name} has shape {y.shape}; expected one integer class label per image, shape "
                        "(N,) (one-hot labels? save y.argmax(1))")
    y = y.reshape(-1)
    if y.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            bad = ~np.isfinite(y) | (y != np.round(y))
        if bad.any():
            count = int(bad.sum())
            what = "labels that are not integers" if count != 1 else "label that is not an integer"
            raise TltfError(f"{where}: {name} has {count} {what} (e.g. {float(y[bad][0]):g}); labels must be class "
                            "indices 0, 1, ...")
    if y.size:
        high = num_classes - 1 if num_classes is not None else MAX_CLASSES - 1
        out = (y < 0) | (y > high)
        if out.any():
            count = int(out.sum())
            example = y[out][0]
            example = f"{float(example):g}" if y.dtype.kind == "f" else str(int(example))
            if num_classes is not None:
                raise TltfError(f"{where}: {name} has {count} label{'s' if count != 1 else ''} outside "
                                f"0..{high} (e.g. {example}); there are {num_classes} classes")
            what = "labels that are not class indices" if count != 1 else "label that is not a class index"
            raise TltfError(f"{where}: {name} has {count} {what} 0..{high} (e.g. {example})")
    return y.astype(np.int32)


def array_split(x: np.ndarray, y: np.ndarray, where: str = "arrays", num_classes: int | None = None,
                names: tuple[str, str] = ("x", "y")) -> Split:
    """In-memory images (uint8 or floats in [0, 1] / [0, 255], grey or RGB) and integer labels (in
    ``0..num_classes - 1`` when given); ``names``: what to call the two arrays in an error."""
    images = _as_images(x, where, names[0])
    labels = _as_labels(y, where, names[1], num_classes)
    if len(images) != len(labels):
        which = "" if names == ("x", "y") else f" ({names[0]}, {names[1]})"
        raise TltfError(f"{where}: {len(images)} images but {len(labels)} labels{which}")

    def make(indices: np.ndarray) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensor_slices((images[indices], labels[indices]))

    return Split(labels, make, image_bytes=int(np.prod(images.shape[1:])))


def _available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _npz_array(data, key: str, where: str) -> np.ndarray:
    """Array ``key`` of an open ``.npz``, read only when its header says it is numbers that fit in memory."""
    try:
        with data.zip.open(f"{key}.npy") as f:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                               else np.lib.format.read_array_header_2_0(f))
    except Exception as e:
        raise TltfError(f"{where}: array '{key}' is not a readable .npy ({_one_line(e)})") from None
    if dtype.hasobject:
        raise TltfError(f"{where}: array '{key}' holds Python objects (dtype {dtype}); tltf reads only arrays of "
                        "numbers (and strings for class_names)")
    size = int(np.prod(shape, dtype=object)) * dtype.itemsize
    available = _available_bytes()
    if available is not None and size > available:
        raise TltfError(f"{where}: array '{key}' {tuple(shape)} {dtype} would take {size / 2 ** 30:.1f} GiB, more "
                        f"than the {available / 2 ** 30:.1f} GiB of memory available")
    try:
        return data[key]
    except MemoryError:
        raise TltfError(f"{where}: array '{key}' does not fit in memory ({size / 2 ** 30:.1f} GiB)") from None
    except Exception as e:
        raise TltfError(f"{where}: array '{key}' is not readable ({_one_line(e)})") from None


def npz_source(path: str | Path, option: str = "--data") -> Source:
    """A ``.npz`` with ``x`` and ``y`` (optionally ``x_val``/``y_val``, ``x_test``/``y_test``, ``class_names``).

    Every split's labels must be integers within the classes, and pixels finite numbers: anything else is a
    one-line error naming the file and the array."""
    path = Path(path)
    where = f"{option} {path}"
    if not path.exists():
        raise TltfError(f"{where}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as e:
        raise TltfError(f"{where}: not a readable .npz ({type(e).__name__})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise TltfError(f"{where}: not a .npz archive (a single .npy array?); save with numpy.savez(path, x=..., "
                        "y=...)")
    with data:
        return _npz_arrays(data, path, option)


def _npz_arrays(data, path: Path, option: str) -> Source:
    where = f"{option} {path}"
    if "x" not in data or "y" not in data:
        raise TltfError(f"{where}: expected arrays 'x' and 'y' (found: {', '.join(data.files) or 'none'})")
    y = _as_labels(_npz_array(data, "y", where), where, "y")
    if y.size == 0:
        raise TltfError(f"{where}: 'y' is empty")
    if "class_names" in data:
        raw = np.atleast_1d(_npz_array(data, "class_names", where))
        if raw.ndim != 1:
            raise TltfError(f"{where}: class_names must be a list of names, got shape {raw.shape}")
        names = [str(c) for c in raw]
        if len(set(names)) != len(names):
            raise TltfError(f"{where}: class_names has duplicates")
    else:
        names = [str(c) for c in range(int(y.max()) + 1)]
    y = _as_labels(y, where, "y", len(names))
    extra = {}
    for key in ("val", "test"):
        xk, yk = f"x_{key}", f"y_{key}"
        if (xk in data) != (yk in data):
            have, missing = (xk, yk) if xk in data else (yk, xk)
            raise TltfError(f"{where}: has '{have}' but no '{missing}'")
        if xk in data:
            split = array_split(_npz_array(data, xk, where), _npz_array(data, yk, where), where, len(names),
                                (xk, yk))
            if not len(split):
                raise TltfError(f"{where}: '{yk}' is empty")
            extra[key] = split
    source = Source(path.stem, names, array_split(_npz_array(data, "x", where), y, where, len(names)),
                    extra.get("val"), extra.get("test"))
    present = np.unique(y)
    if len(present) < 2:
        raise TltfError(f"{where}: found a single class ({names[int(present[0])]}); "
                        "a classifier needs at least two")
    return source


# --- TensorFlow Datasets --------------------------------------------------------------------------------------

def tfds_source(spec: str, data_dir: str | None = None, option: str = "--data") -> Source:
    """``NAME`` or ``NAME:SPLIT`` (a TFDS split spec such as ``train[:500]``) from tensorflow-datasets.

    With no split given, ``train`` trains and TFDS's ``validation`` / ``test`` splits are used when they exist.
    Images stay encoded until the tltf pipeline decodes them in parallel.
    """
    try:
        import tensorflow_datasets as tfds
    except Exception as e:
        raise TltfError(f"{option} tfds:{spec}: needs tensorflow-datasets ({_one_line(e)})") from None

    name, _, split = spec.partition(":")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:
        raise TltfError(f"{option} tfds:{spec}: unknown or unavailable dataset ({_one_line(e)})") from None
    _prepare(builder, name, option)
    info = builder.info
    keys = info.supervised_keys
    if not keys or len(keys) != 2:
        raise TltfError(f"{option} tfds:{name}: has no (image, label) supervised keys")
    image_key, label_key = keys
    label_feature = info.features[label_key]
    names = list(getattr(label_feature, "names", None) or range(label_feature.num_classes))
    available = set(info.splits.keys()) if info.splits else None  # None: unknown (e.g. under mock data)
    wanted = {"train": split or "train"}
    if not split:
        for key, tfds_split in (("val", "validation"), ("test", "test")):
            if available is None or tfds_split in available:
                wanted[key] = tfds_split
    splits = {}
    for key, tfds_split in wanted.items():
        try:
            ds = tfds.load(name, split=tfds_split, data_dir=data_dir, as_supervised=True,
                           decoders={image_key: tfds.decode.SkipDecoding()}, shuffle_files=False)
        except Exception as e:
            if key != "train" and available is None:
                continue  # an optional split that this dataset turned out not to have
            raise TltfError(f"{option} tfds:{name}:{tfds_split}: could not load ({_one_line(e)})") from None
        splits[key] = _tfds_split(ds)
    source = Source(name, [str(n) for n in names], splits["train"], splits.get("val"), splits.get("test"))
    check_classes(source, option, f"tfds:{spec}")
    return source


def _prepare(builder, name: str, option: str) -> None:
    """Download and prepare a TFDS dataset that is not in the local data folder yet; a one-line error when that
    fails (no network, a missing download dependency), instead of whatever the download machinery raised."""
    try:
        prepared = builder.is_prepared()
    except Exception:
        prepared = False
    if prepared:
        return
    try:
        builder.download_and_prepare()
    except Exception as e:
        try:
            root = builder.data_dir_root
        except Exception:
            root = "the TFDS data folder"
        raise TltfError(f"{option} tfds:{name}: not in the local TFDS data folder ({root}) and could not be "
                        f"downloaded ({_one_line(e)}); prepare it where there is a network (tfds build {name}) "
                        "and pass its folder with --data-dir") from None


def _tfds_split(ds: tf.data.Dataset) -> Split:
    labels = np.fromiter(ds.map(lambda x, y: y).as_numpy_iterator(), dtype=np.int32)

    def make(indices: np.ndarray) -> tf.data.Dataset:
        mask = np.zeros(len(labels), bool)
        mask[indices] = True
        mask_t = tf.constant(mask)
        picked = ds.enumerate().filter(lambda i, xy: tf.gather(mask_t, i)).map(lambda i, xy: xy)
        return picked.map(lambda x, y: (decode(x) if x.dtype == tf.string else _rgb(x), tf.cast(y, tf.int32)),
                          num_parallel_calls=AUTOTUNE)

    return Split(labels, make, image_bytes=256 * 256 * 3)


def _rgb(image: tf.Tensor) -> tf.Tensor:
    image = tf.cast(image, tf.uint8)
    return tf.image.grayscale_to_rgb(image) if image.shape[-1] == 1 else image


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]
