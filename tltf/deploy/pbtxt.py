"""Protocol-buffer text format (Triton's ``config.pbtxt``) to and from plain Python values, without the schema.

A message is a ``dict``; a repeated field a ``list`` (of scalars or of dicts); an enum value an :class:`Enum`
(written bare, ``TYPE_FP32``), a string a ``str`` (written quoted). Reading gives the same shapes back, with bare
words as :class:`Enum`, numbers as ``int``/``float`` and ``true``/``false`` as ``bool``; a repeated field written
once reads as a single value, so readers of optional lists use :func:`as_list`. The text is checked against
Triton's own ``ModelConfig`` protobuf in the tests (tritonclient's ``model_config_pb2``); here only the syntax
is known, so serving a repository needs no tritonclient.

>>> dumps({"name": "m", "max_batch_size": 8, "input": [{"data_type": Enum("TYPE_FP32"), "dims": [3]}]})
'name: "m"\\nmax_batch_size: 8\\ninput [\\n  {\\n    data_type: TYPE_FP32\\n    dims: [ 3 ]\\n  }\\n]\\n'
>>> loads('max_batch_size: 8 dynamic_batching { preferred_batch_size: [ 4, 8 ] }')
{'max_batch_size': 8, 'dynamic_batching': {'preferred_batch_size': [4, 8]}}
"""

from __future__ import annotations

import json
import re

from tltf.errors import TltfError


class Enum(str):
    """An enum value, written without quotes."""


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a double-quoted string with C-style escapes (ASCII)


def dumps(message: dict, indent: int = 0) -> str:
    """``message`` in text format, one field a line, nested messages indented by two spaces."""
    pad, lines = "  " * indent, []
    for key, value in message.items():
        if isinstance(value, dict):
            lines += [f"{pad}{key} {{", dumps(value, indent + 1).rstrip("\n"), f"{pad}}}"]
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            lines.append(f"{pad}{key} [")
            for n, item in enumerate(value):
                comma = "," if n < len(value) - 1 else ""
                lines += [f"{pad}  {{", dumps(item, indent + 2).rstrip("\n"), f"{pad}  }}{comma}"]
            lines.append(f"{pad}]")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "\n".join(line for line in lines if line) + "\n"


_TOKEN = re.compile(r'\s+|#[^\n]*|(?P<str>"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\')|(?P<word>[A-Za-z_][\w.]*)'
                    r'|(?P<num>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)|(?P<punct>[{}\[\]:,;<>])')


def _tokens(text: str, name: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise TltfError(f"{name}: line {line}: unexpected {text[pos:pos + 10]!r} (not protobuf text format)")
        pos = m.end()
        if m.lastgroup:
            out.append((m.lastgroup, m.group(m.lastgroup)))
    return out


def loads(text: str, name: str = "config.pbtxt") -> dict:
    """The message in ``text``; a syntax error is a one-line :class:`TltfError` naming ``name``."""
    tokens = _tokens(text, name)
    pos = 0

    def fail(what: str):
        got = tokens[pos][1] if pos < len(tokens) else "the end"
        raise TltfError(f"{name}: expected {what}, found {got!r} (not protobuf text format)")

    def peek(value: str) -> bool:
        return pos < len(tokens) and tokens[pos][1] == value

    def take(value: str) -> None:
        nonlocal pos
        if not peek(value):
            fail(repr(value))
        pos += 1

    def scalar():
        nonlocal pos
        if pos >= len(tokens):
            fail("a value")
        kind, value = tokens[pos]
        pos += 1
        if kind == "str":
            return json.loads('"' + value[1:-1].replace('\\\'', "'") + '"') if value[0] == "'" else json.loads(value)
        if kind == "num":
            value = value.rstrip("fF")
            return float(value) if re.search(r"[.eE]", value) else int(value)
        if kind == "word":
            return {"true": True, "false": False}.get(value, Enum(value))
        pos -= 1
        fail("a value")

    def message(close: str | None) -> dict:
        nonlocal pos
        fields: dict = {}
        while not (peek(close) if close else pos >= len(tokens)):
            if pos >= len(tokens) or tokens[pos][0] != "word":
                fail("a field name")
            key = tokens[pos][1]
            pos += 1
            colon = peek(":")
            if colon:
                pos += 1
            if peek("{") or peek("<"):
                end = "}" if tokens[pos][1] == "{" else ">"
                pos += 1
                value = message(end)
                take(end)
            elif peek("["):
                pos += 1
                value = []
                while not peek("]"):
                    if peek("{"):
                        pos += 1
                        value.append(message("}"))
                        take("}")
                    else:
                        value.append(scalar())
                    if peek(","):
                        pos += 1
                take("]")
            elif colon:
                value = scalar()
            else:
                fail(f"':' or '{{' after {key!r}")
            if key in fields:  # a repeated field written field by field
                before = fields[key]
                fields[key] = (before if isinstance(before, list) else [before]) + (
                    value if isinstance(value, list) else [value])
            else:
                fields[key] = value
            if peek(",") or peek(";"):
                pos += 1
        return fields

    return message(None)


def as_list(value) -> list:
    """A repeated field's values whether it was written once (a single value) or as a list; ``None``: ``[]``."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
