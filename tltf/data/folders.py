"""Image folders, scanned without TensorFlow: class folders (``class_name/*.jpg``), ``train/ val/ test/`` splits of
that layout, or plain images in any layout. Used by the training sources (:mod:`tltf.data.sources`) and by the
inference side (``tltf predict FOLDER``, ``tltf drift`` on an ``.onnx``).

Every file is checked before anything is decoded: a file Pillow cannot read is skipped, and so is an image over
:data:`tltf.runtime.images.MAX_IMAGE_PIXELS` (its size read from the header, the image never decoded: a 10,000 x
10,000 PNG of a few KB would take 300 MB per decode), each with a warning that names a file.
"""

from __future__ import annotations

import concurrent.futures
import re
import warnings
from pathlib import Path

import numpy as np

from tltf.errors import TltfError
from tltf.runtime.images import MAX_IMAGE_PIXELS, is_image_file

SPLIT_DIRS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test", "testing")}


def _problem(path: Path) -> str | None:
    """Why the scan skips ``path`` (None: it is kept): ``"unreadable"``, or the size of an image over
    :data:`MAX_IMAGE_PIXELS`, read from its header (Pillow's ``verify`` checks the file without decoding it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                return f"{width}x{height}, {width * height:,} pixels"
            im.verify()
    except Image.DecompressionBombError as e:  # over Pillow's own limit: only the pixel count is known
        found = re.search(r"\((\d+) pixels\)", str(e))
        return f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    except Exception:
        return "unreadable"
    return None


def readable(files: list[str], root) -> list[int]:
    """The indices of ``files`` to train on; the others skipped with a warning per kind (unreadable, too large)
    that counts them and names one."""
    from PIL import Image

    with warnings.catch_warnings():  # here, not in the threads: the filters are the process's, not a thread's
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # said below, with the file's name
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            problems = list(pool.map(lambda p: _problem(Path(p)), files))
    unreadable = [f for f, why in zip(files, problems) if why == "unreadable"]
    large = [(f, why) for f, why in zip(files, problems) if why not in (None, "unreadable")]
    if unreadable:
        _warn(f"{root}: skipped {len(unreadable)} unreadable image(s), e.g. {unreadable[0]}")
    if large:
        _warn(f"{root}: skipped {len(large)} image(s) over the {MAX_IMAGE_PIXELS:,} pixels tltf decodes, e.g. "
              f"{large[0][0]} ({large[0][1]})")
    return [i for i, why in enumerate(problems) if why is None]


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)
    print(f"warning: {message}", flush=True)


def class_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def scan(root: Path, class_names: list[str] | None, option: str) -> tuple[list[str], list[str], np.ndarray]:
    dirs = class_dirs(root)
    names = class_names or [d.name for d in dirs if any(is_image_file(f) for f in d.rglob("*"))]
    files, labels = [], []
    for d in dirs:
        if d.name not in names:
            if class_names is not None and any(is_image_file(f) for f in d.rglob("*")):
                raise TltfError(f"{option} {d}: class {d.name!r} is not among the training classes")
            continue
        for f in sorted(d.rglob("*")):
            if f.is_file() and is_image_file(f):
                files.append(str(f))
                labels.append(names.index(d.name))
    if not files:
        raise TltfError(f"{option} {root}: no images found (expected class_name/*.jpg|png folders)")
    keep = readable(files, root)
    if len(keep) < len(files):
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
        if not files:
            raise TltfError(f"{option} {root}: no readable images")
    return names, files, np.asarray(labels, dtype=np.int32)


def check_class_names(names: list[str], option: str, where) -> None:
    """A one-line error for fewer than two classes."""
    if len(names) < 2:
        found = names[0] if names else "none"
        raise TltfError(f"{option} {where}: found a single class ({found}); a classifier needs at least two")


def split_dirs(root: Path) -> dict[str, Path | None]:
    """``{"train": DIR or None, "val": ..., "test": ...}``: the split folders of a ``train/ val/ test/`` layout."""
    subdirs = {d.name.lower(): d for d in class_dirs(Path(root))}
    return {k: next((subdirs[n] for n in names if n in subdirs), None) for k, names in SPLIT_DIRS.items()}


def image_files(root: str | Path) -> list[str]:
    """Every readable image under ``root``, any layout, sorted (the others skipped with a warning)."""
    root = Path(root)
    files = [str(f) for f in sorted(root.rglob("*")) if f.is_file() and is_image_file(f)]
    return [files[i] for i in readable(files, root)]


def labelled_files(root: str | Path, option: str = "--data") -> tuple[list[str], list[str], np.ndarray]:
    """``(class names, files, labels)`` of a class-folder dataset, its ``train/ val/ test/`` splits one after
    the other (the classes are the training split's); a one-line :class:`TltfError` where ``root`` holds no
    class folders with images."""
    root = Path(root)
    dirs = split_dirs(root)
    if dirs["train"] is None:
        return scan(root, None, option)
    names, files, labels = scan(dirs["train"], None, option)
    labels = [labels]
    for key in ("val", "test"):
        if dirs[key] is not None:
            _, f, y = scan(dirs[key], names, option)
            files, labels = files + f, labels + [y]
    return names, files, np.concatenate(labels)
