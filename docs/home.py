"""The site's home page is the README: an MkDocs hook (``mkdocs.yml``) that adds ``index.md`` made from
``README.md`` at every build, so the two cannot disagree and a line added to the README reaches the site.

Links into ``docs/`` lose that prefix; a link to a file the site does not hold (``examples/quickstart.ipynb``)
becomes its text and the path as code, since the site has no page for it.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def home_markdown(readme: str, docs_dir: Path) -> str:
    def link(match: re.Match) -> str:
        text, target = match.groups()
        if re.match(r"^[a-z]+://|^#|^mailto:", target):
            return match.group(0)
        path = target[5:] if target.startswith("docs/") else None
        if path is not None and (path.split("#")[0] == "index.md" or (docs_dir / path.split("#")[0]).is_file()):
            return f"[{text}]({path})"  # index.md: this page, made here
        return f"`{target}`" if text.strip("`") == target else f"{text} (`{target}`)"

    return _LINK.sub(link, readme)


def on_files(files, config, **kwargs):
    from mkdocs.structure.files import File

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "index.md", content=home_markdown(readme, Path(config["docs_dir"]))))
    return files
