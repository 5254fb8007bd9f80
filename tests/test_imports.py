"""No import cycles anywhere in tltf/: module-level and function-level imports alike.

Read from the source with :mod:`ast` (nothing is imported): every ``import``/``from ... import`` of a tltf module,
wherever it sits in the file, is an edge. ``from tltf.x import y`` imports ``tltf.x`` (its ``__init__`` runs) and
also ``tltf.x.y`` when that is a module; a name that is not a module resolves to the nearest enclosing module. An
import of a module's own parent package (``from tltf.data import offline`` inside ``tltf/data/builtin.py``, or
``import tltf``) is not an edge: the package's ``__init__`` importing its children is not a cycle worth counting.
A cycle is a strongly connected group of more than one module.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tltf"  # read, never imported


def _modules(root: Path) -> dict[str, Path]:
    """``{"tltf.data.builtin": path}``; a package is named by its ``__init__.py``."""
    mods = {}
    for f in root.rglob("*.py"):
        rel = f.relative_to(root.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement in module ``name`` (file ``path``) may load."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative: from the module's package (a package is its own)
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return [module] + [f"{module}.{alias.name}" for alias in node.names]


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules it imports}`` within the package at ``root``."""
    mods = _modules(root)
    package = root.name
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(name, path, node):
                while target and target not in mods:  # a name inside a module -> that module
                    target = target.rpartition(".")[0]
                if not target or target == name or not (target == package or target.startswith(package + ".")):
                    continue
                if mods[target].name == "__init__.py" and name.startswith(target + "."):
                    continue  # the module's own parent package
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan, iterative), each sorted, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[v])
                if low[v] == index[v]:
                    group = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.append(w)
                        if w == v:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return sorted(groups)


def _edges_within(edges: dict[str, set[str]], group: list[str]) -> list[str]:
    return [f"{a} -> {b}" for a in group for b in sorted(edges[a]) if b in group]


def test_no_import_cycles():
    edges = import_graph()
    found = cycles(edges)
    assert not found, "import cycles in tltf/ (module- and function-level imports):\n" + "\n".join(
        f"  {' '.join(group)}\n    " + "\n    ".join(_edges_within(edges, group)) for group in found)


def test_the_check_sees_what_it_should(tmp_path):
    """Function-level and relative imports count; a name resolves to its module; the own parent package and
    imports from outside the package do not count."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("import os\nfrom pkg.sub import helper\n\ndef f():\n    from pkg import b\n")
    (pkg / "sub" / "helper.py").write_text("from . import a\n")  # relative, and a cycle with pkg.sub.a
    (pkg / "b.py").write_text("from pkg.sub.a import f\n\ndef g():\n    import pkg.c.name_in_c\n")
    (pkg / "c.py").write_text("def h():\n    from pkg.sub import f\n")  # pkg.sub: a package, not c's parent
    edges = import_graph(pkg)
    assert edges["pkg.sub"] == {"pkg.sub.a"}
    assert edges["pkg.sub.a"] == {"pkg.sub.helper", "pkg.b"}  # `from pkg.sub import helper`: not pkg.sub itself
    assert edges["pkg.sub.helper"] == {"pkg.sub.a"}
    assert edges["pkg.b"] == {"pkg.sub.a", "pkg.c"}
    assert edges["pkg.c"] == {"pkg.sub"}
    assert cycles(edges) == [["pkg.b", "pkg.c", "pkg.sub", "pkg.sub.a", "pkg.sub.helper"]]
    (pkg / "sub" / "a.py").write_text("from pkg.sub import helper\n")  # without its function-level import
    assert cycles(import_graph(pkg)) == [["pkg.sub.a", "pkg.sub.helper"]]
