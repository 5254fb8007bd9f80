"""A bounded reader for the small CSV tables users hand tltf (data manifests, zero-shot attribute tables).

The file must exist, be under a size cap, be UTF-8 (a BOM is fine), have the required column, and every row must
have the header's number of cells; blank rows are skipped. Every problem is one :class:`TltfError` line naming the
option, the file and the row.
"""

from __future__ import annotations

import csv
from pathlib import Path

from tltf.errors import TltfError


def read_table(path: str | Path, option: str, required: str, what: str,
               max_bytes: int) -> tuple[list[str], list[list[str]]]:
    """``(header, rows)`` of the CSV at ``path``, header cells stripped; ``what`` names the table in errors."""
    path = Path(path)
    if not path.is_file():
        raise TltfError(f"{option} {path}: no such file")
    if path.stat().st_size > max_bytes:
        raise TltfError(f"{option} {path}: larger than {max_bytes // 1024 ** 2} MB; not {what}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            table = [r for r in csv.reader(f) if any(cell.strip() for cell in r)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise TltfError(f"{option} {path}: not a readable CSV ({str(e).splitlines()[0][:100]})") from None
    if not table:
        raise TltfError(f"{option} {path}: empty")
    header = [h.strip() for h in table[0]]
    if required not in header:
        raise TltfError(f"{option} {path}: needs a '{required}' column (header: {', '.join(header[:8])})")
    for line, row in enumerate(table[1:], start=2):
        if len(row) != len(header):
            raise TltfError(f"{option} {path}: row {line} has {len(row)} cells, the header {len(header)}")
    return header, table[1:]
