"""The one loader of tltf ``.keras`` files: custom objects registered, safe mode on, one-line errors.

:mod:`tltf.keras_objects` registers the serialisable objects (of :mod:`tltf.models`, the plug-ins' heads and
:mod:`tltf.staging.optimizers`); this module imports it by name when it loads a file and imports nothing else of
tltf, so every layer above ``models`` (weights, export, predict, the API) can load models through it without an
import cycle.
"""

from __future__ import annotations

from pathlib import Path

import keras

from tltf.errors import TltfError, first_line


def load_model(path: str | Path, option: str | None = None) -> keras.Model:
    """A tltf ``.keras`` model (not compiled), or a one-line :class:`TltfError` naming the file.

    ``option`` (e.g. ``"--weights"``) prefixes the error when the path came from that command-line option:
    ``"--weights FILE: not a loadable Keras model (...)"``.
    """
    import importlib

    importlib.import_module("tltf.keras_objects")  # registers the objects of the layers above this one

    path = Path(path)
    named = f"{option} {path}" if option else str(path)
    if not path.is_file():
        raise TltfError(f"{named}: no such model file")
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:  # a corrupt zip, a foreign custom layer, a Lambda refused by safe mode …
        first = first_line(e, 160)
        raise TltfError(f"{named}: not a loadable Keras model ({first})") from None
