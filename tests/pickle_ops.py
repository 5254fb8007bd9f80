"""Pickle opcodes written by hand, for the ``.pth`` fixtures (``test_pth_reader.py``) and the hostile ones
(``test_hostile_files.py``): a checkpoint's pickle is built opcode by opcode, so every test knows its bytes."""

from __future__ import annotations

import struct


def global_(module: str, name: str) -> bytes:
    """GLOBAL: push ``module.name``."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def string(s: str) -> bytes:
    """BINUNICODE."""
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def integer(i: int) -> bytes:
    """BININT, or LONG1 outside 32 bits."""
    return b"J" + struct.pack("<i", i) if -2**31 <= i < 2**31 else b"\x8a\x08" + struct.pack("<q", i)


def tuple_(items) -> bytes:
    """MARK items TUPLE."""
    return b"(" + b"".join(items) + b"t"
