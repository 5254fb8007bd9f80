"""The one loader of tltf ``.keras`` files: custom objects registered, safe mode on, one-line errors."""

from __future__ import annotations

from pathlib import Path

import keras

from tltf.errors import TltfError


def load_model(path: str | Path) -> keras.Model:
    """A tltf ``.keras`` model, or a one-line error naming the file."""
    import tltf  # noqa: F401  (registers custom objects)

    path = Path(path)
    if not path.exists():
        raise TltfError(f"{path}: no such model file")
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:
        raise TltfError(f"{path}: not a loadable Keras model ({str(e).splitlines()[0][:150]})") from None
