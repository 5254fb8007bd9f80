"""A griffe extension for the API reference (``mkdocs.yml``): tltf's docstrings as Markdown.

tltf's docstrings are reST-flavoured (``:func:`x```, ````code````, ``>>>`` examples). mkdocstrings renders them as
Markdown, where a ``>>>`` example would be read as prose (``metrics["stages"][0]`` becomes a broken link). This
extension fences each run of ``>>>``/``...`` lines and their output as a ``pycon`` code block, and turns the
``:role:`target``` cross-references into code spans, so the docstrings stay as they are for ``help()`` and doctest.
"""

from __future__ import annotations

import re

from griffe import Extension

_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|exc|obj|ref|term):`~?([^`]+)`")
_DOUBLE_BACKTICK = re.compile(r"``([^`]+)``")


def markdown(text: str) -> str:
    out: list[str] = []
    in_example = False
    for line in text.splitlines():
        stripped = line.strip()
        starts = stripped.startswith(">>>")
        if starts and not in_example:
            out.append("```pycon")
            in_example = True
        elif in_example and not stripped:
            out.append("```")
            in_example = False
        out.append(line if in_example else _DOUBLE_BACKTICK.sub(r"`\1`", _ROLE.sub(r"`\1`", line)))
    if in_example:
        out.append("```")
    return "\n".join(out)


class Docstrings(Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
