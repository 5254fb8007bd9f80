"""Reading a YAML file a user hands tltf (``--config`` recipes, ``--plan`` files) at a bounded cost.

A hostile file costs little: at most :data:`MAX_BYTES` are read (``/dev/zero`` or a FIFO is a file too), ``[ ]`` /
``{ }`` nesting deeper than :data:`MAX_NESTING` is refused before parsing (PyYAML's own parser takes time quadratic
in it: 100k brackets took 315 s), anchors and aliases are refused (nested aliases expand a few hundred bytes into
gigabytes: the "billion laughs"), and only plain YAML types are built (a safe loader; libyaml's where installed,
which parses in linear time). Every failure is a one-line :class:`~tltf.errors.TltfError` naming the option.
"""

from __future__ import annotations

import re
from pathlib import Path

from tltf.errors import TltfError

#: the largest file read. A recipe or plan is a few hundred bytes; 1 MB of inline mappings took 12 s to parse with
#: libyaml, 33 s with PyYAML's own parser (a loaded 2-core machine)
MAX_BYTES = 256 << 10
#: the deepest [ ] / { } nesting read (a sectioned recipe with an inline plan needs 4)
MAX_NESTING = 64


def read_yaml(path: str | Path, where: str):
    """The YAML document in ``path`` (plain Python values); ``where`` names it in errors (``--config FILE``)."""
    import yaml

    try:
        with open(path, "rb") as f:  # read to the cap, never to the end
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise TltfError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise TltfError(f"{where}: a folder, not a YAML file") from None
    except OSError as e:
        raise TltfError(f"{where}: cannot be read ({e.strerror or e})") from None
    if len(raw) > MAX_BYTES:
        raise TltfError(f"{where}: larger than {MAX_BYTES // 1024} KiB; a recipe or plan is a short YAML mapping")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TltfError(f"{where}: not UTF-8 text (byte {e.start})") from None
    if _flow_depth(text) > MAX_NESTING:
        raise TltfError(f"{where}: nested more than {MAX_NESTING} levels deep in [ ] or {{ }}; a recipe or plan is "
                        "a flat or sectioned mapping")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                raise TltfError(f"{where}: line {event.start_mark.line + 1}: YAML anchors and aliases (&name, "
                                "*name) are not allowed")
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as e:
        raise TltfError(f"{where}: not valid YAML ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise TltfError(f"{where}: nested too deeply") from None


def _flow_depth(text: str) -> int:
    """The deepest nesting of ``[`` and ``{`` in ``text`` (quotes not told apart: it only ever over-counts)."""
    depth = deepest = 0
    for ch in re.sub(r"[^\[\]{}]", "", text):
        depth = depth + 1 if ch in "[{" else max(depth - 1, 0)
        deepest = max(deepest, depth)
    return deepest
