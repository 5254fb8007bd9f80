"""Atomic file writes: never a half-written model, report or plot.

>>> with replacing("exported/model.onnx", ".onnx") as tmp:     # doctest: +SKIP
...     onnx.save(proto, tmp)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def temp_beside(path: str | Path, suffix: str) -> Path:
    """An empty temporary file in ``path``'s folder (same file system, so ``os.replace`` is atomic), with the
    permissions a plain ``open(..., "w")`` would give (``mkstemp`` alone makes 0600)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = ".part"):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(model, path: str | Path) -> None:
    """``model.save`` through a temporary ``.keras`` file beside ``path``: never a half-written model."""
    with replacing(path, ".keras") as tmp:
        model.save(tmp)
