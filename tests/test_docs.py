"""The documentation: the site builds with ``--strict``, every ``tltf …`` command it shows parses, it renders in a
real browser, and ``--help`` shows every option under the groups of ``tltf/cli/help_groups.py``.

- ``mkdocs build --strict`` fails on a broken link or anchor, a page left out of the nav, a missing API reference
  target: the site is built once per session into a temporary folder.
- Commands are taken from README.md and docs/**/*.md: every line of a ``bash``/``sh``/plain code block, the ``$ ``
  lines of a ``console`` block, and inline code spans that are a whole command (no ``…``/``[...]`` placeholders).
  Each is run as ``tltf ARGS --help`` through click: an unknown command or option, or an argument where the command
  takes none, exits 2 (the check itself is tested to fail on one).
- The site's home page is README.md itself (``docs/home.py``, a build hook).
- The built site is opened in Debian's Chromium (``/usr/bin/chromium``, driven by Playwright; never a browser
  Playwright downloads): the home page, a guide and the CLI reference, a screenshot of each kept in
  ``$TLTF_TEST_ARTIFACTS/docs`` (or the test's tmp folder).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from tltf.cli import COMMANDS, help_groups, main

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
PLACEHOLDER = re.compile(r"…|\.\.\.|\[|\]|\||<|>|\{")


# --- commands shown in the docs -------------------------------------------------------------------------------

def _fenced_blocks(text: str):
    """``(language, [lines])`` of each fenced code block."""
    block, language = None, ""
    for line in text.splitlines():
        fence = re.match(r"^\s*```\s*([\w+-]*)", line)
        if fence and block is None:
            block, language = [], fence.group(1).lower()
        elif line.strip().startswith("```") and block is not None:
            yield language, block
            block = None
        elif block is not None:
            block.append(line)


def _joined(lines: list[str]) -> list[str]:
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + " " + line.strip()
        else:
            out.append(line)
    return out


def _tltf_commands(line: str) -> list[list[str]]:
    """The ``tltf`` invocations of a shell line (a segment between ``&&``, ``;``, ``|`` whose first word, after any
    ``VAR=value``, is ``tltf``), as argument lists without ``tltf``."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    segments, current = [], []
    for word in words:
        if word in ("&&", "||", ";", "|"):
            segments.append(current)
            current = []
        else:
            current.append(word)
    segments.append(current)
    commands = []
    for segment in segments:
        while segment and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", segment[0]):
            segment = segment[1:]
        if segment and segment[0] == "tltf":
            commands.append(segment[1:])
    return commands


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, kind, args)`` for every ``tltf`` command shown in README.md and docs/: kind ``run`` for a code
    block's line (it must run as written), ``mention`` for an inline code span (``tltf export`` naming a command:
    its options must exist and its values parse, but it may leave out required ones)."""
    found = []
    for path in DOC_FILES:
        text = path.read_text()
        where = str(path.relative_to(REPO))
        for language, lines in _fenced_blocks(text):
            if language not in SHELL_BLOCKS:
                continue
            for line in _joined(lines):
                stripped = line.strip()
                if language == "console":
                    if not stripped.startswith("$ "):
                        continue
                    stripped = stripped[2:]
                found += [(where, "run", args) for args in _tltf_commands(stripped)]
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`(tltf [^`]+)`", prose):
            if not PLACEHOLDER.search(span):
                found += [(where, "mention", args) for args in _tltf_commands(span)
                          if args and not args[0].isupper()]  # `tltf COMMAND --help`: a placeholder
    return found


COMMANDS_SHOWN = documented_commands()


def _parse(args: list[str], mention: bool = False) -> int:
    """Parse ``tltf ARGS`` as the shell would run it, without running it: 0 if it parses, click's exit status (2 for
    a usage error: an unknown command or option, a bad value or choice, a missing or extra argument) otherwise."""
    try:
        ctx = main.make_context("tltf", list(args))
        while isinstance(ctx.command, click.Group):
            rest = [*(getattr(ctx, "_protected_args", None) or ctx.protected_args), *ctx.args]
            if not rest:
                break
            name, command, rest = ctx.command.resolve_command(ctx, rest)
            ctx = command.make_context(name, rest, parent=ctx)
    except click.exceptions.Exit as e:  # --help, --version
        return e.exit_code
    except click.MissingParameter as e:
        return 0 if mention else e.exit_code
    except click.BadOptionUsage as e:  # `tltf compare --adapt` names the option, its value left out
        return 0 if mention and "requires an argument" in e.message and args[-1] == e.option_name else e.exit_code
    except click.ClickException as e:
        return e.exit_code
    return 0


def test_the_docs_show_commands_of_every_kind():
    names = {args[0] for _, kind, args in COMMANDS_SHOWN if args and kind == "run"}
    assert len(COMMANDS_SHOWN) >= 40, len(COMMANDS_SHOWN)
    assert {"fit", "evaluate", "export", "predict", "serve", "bench", "drift", "instances", "compare",
            "advise"} <= names, names


def test_every_documented_command_parses():
    """One test for all (~130) commands: a test each cost ~0.8 s of per-test set-up (conftest's Keras reset)."""
    bad = []
    for where, kind, args in COMMANDS_SHOWN:
        status = _parse(args, mention=kind == "mention")
        if status != 0:
            result = CliRunner().invoke(main, args)  # for the message
            bad.append(f"{where}: `tltf {' '.join(args)}` ({kind}) exits {status}: "
                       f"{result.output.strip().splitlines()[-1] if result.output.strip() else ''}")
    assert not bad, "commands in the docs that do not parse:\n" + "\n".join(bad)


def test_the_parse_check_fails_on_an_unknown_option_command_or_argument():
    assert _parse(["fit", "--data", "photos/", "--epochs", "3"]) == 0
    assert _parse(["fit", "--data", "photos/", "--no-such-option", "3"]) == 2
    assert _parse(["fitt", "--data", "photos/"]) == 2
    assert _parse(["fit", "photos/"]) == 2  # fit takes no argument
    assert _parse(["fit", "--epochs", "six"]) == 2
    assert _parse(["fit", "--stage", "sideways"]) == 2
    assert _parse(["export", "m.keras", "--onnx", "--int9"]) == 2
    assert _parse(["weights", "no-such-subcommand"]) == 2
    assert _parse(["export", "--onnx"]) == 2 and _parse(["export", "--onnx"], mention=True) == 0
    assert _parse(["export", "--onnx", "--opset", "x"], mention=True) == 2


def test_readme_keeps_the_two_commands_and_the_path_to_a_served_model():
    """The commands CI runs, unchanged, and install / fit on a folder / export / serve within the first screens."""
    text = (REPO / "README.md").read_text()
    assert ('pip install -e ".[train]" && tltf fit --data builtin:shapes --backbone mobilenet_v2 --weights '
            'torchvision:mobilenet_v2 --image-size 96 --epochs 6 --out runs/shapes') in text
    assert 'pip install -e ".[dev]" && python -m pytest -q' in text
    assert len(text.splitlines()) <= 250
    head = "\n".join(text.splitlines()[:60])
    for needle in ("pip install", "tltf fit --data photos/", "tltf export", "tltf predict", "tltf serve"):
        assert needle in head, needle
    # one link per row of "What tltf does", each to a page that exists
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / link).is_file() or link == "docs/index.md", link  # index.md: this README (docs/home.py)


# --- grouped --help ------------------------------------------------------------------------------------------

def _command(name: str) -> click.Command:
    return main.get_command(click.Context(main), name)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_shows_every_option(name):
    command = _command(name)
    result = CliRunner().invoke(main, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[0] in result.output, (name, param.opts[0])


def test_fit_help_groups_are_the_settings_groups():
    """Each help group of ``fit`` holds settings of one FitConfig group (tltf.training.settings.GROUPS)."""
    from tltf.training.settings import FitConfig

    group_of = {f.name: f.metadata["group"] for f in fields(FitConfig)}
    expected = {"Data": "data", "Model": "model", "Schedule": "schedule", "Hardware": "runtime",
                "Run folder and recipe": "runtime"}
    shown = help_groups.option_groups("fit", _command("fit"))
    assert [title for title, _ in shown][:3] == ["Data", "Model", "Schedule"]  # most used first
    for title, params in shown:
        if title == help_groups.DEFAULT_GROUP:
            # nothing left ungrouped but --help (its param name differs across click versions: click 8.5 names it
            # "_click_default_help")
            assert len(params) == 1 and "--help" in params[0].opts, [p.opts for p in params]
            continue
        want = "method" if title.startswith("Method") else expected[title]
        for param in params:
            assert group_of.get(param.name, want if title == "Run folder and recipe" else None) == want, (
                title, param.name, group_of.get(param.name))


def _with_new_option() -> click.Command:
    @click.command()
    @click.argument("model")
    @click.option("--onnx", is_flag=True, help="Export to ONNX.")
    @click.option("--brand-new-option", help="Added by someone who did not edit help_groups.")
    def command(model, onnx, brand_new_option):
        """Export MODEL."""

    return help_groups.grouped("export", command)


def test_an_option_no_group_names_still_shows(monkeypatch):
    command = _with_new_option()
    rich = CliRunner().invoke(command, ["--help"], terminal_width=120)
    assert rich.exit_code == 0
    assert "Export" in rich.output and "--brand-new-option" in rich.output and "Options" in rich.output
    assert rich.output.index("--onnx") < rich.output.index("--brand-new-option")

    monkeypatch.setitem(sys.modules, "rich_click", None)  # the runtime install: no rich-click
    plain = CliRunner().invoke(_with_new_option(), ["--help"])
    assert plain.exit_code == 0, plain.output
    lines = plain.output.splitlines()
    assert "Export:" in lines and "Options:" in lines
    assert lines.index("Export:") < lines.index("Options:")
    assert any("--brand-new-option" in line for line in lines[lines.index("Options:"):])


def test_help_does_not_load_rich_click_or_tensorflow_until_drawn():
    code = ("import sys; from click.testing import CliRunner; from tltf.cli import main\n"
            "r = CliRunner().invoke(main, ['fit', '--data', 'x', '--dry-run', '--no-such'])\n"
            "print(r.exit_code, 'rich_click' in sys.modules, 'tensorflow' in sys.modules)\n"
            "r = CliRunner().invoke(main, ['fit', '--help'])\n"
            "print(r.exit_code, 'rich_click' in sys.modules, 'tensorflow' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False", "False", "0", "True", "False"], proc.stdout + proc.stderr[-2000:]


# --- the site ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out


def test_site_builds_strict_with_generated_references(site):
    cli = (site / "reference" / "cli" / "index.html").read_text()
    for name in COMMANDS:
        assert f'id="tltf-{name}"' in cli or f">{name}<" in cli, name
    assert "--max-batch" in cli and "--select-instances" in cli  # options come from the click commands
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "export_onnx" in api and "OnnxModel" in api and "FitConfig" in api
    for name in ("index", "getting-started", "choosing-a-strategy", "benchmarks/index", "guides/serving"):
        assert (site / (name if name.endswith("index") else f"{name}/index") ).with_suffix(".html").is_file(), name


def test_benchmark_figures_are_drawn_from_their_json(site):
    import json

    sys.path.insert(0, str(REPO / "docs"))
    try:
        import plots
    finally:
        sys.path.remove(str(REPO / "docs"))
    for name, (json_name, script, _, _) in plots.FIGURES.items():
        assert (REPO / "benchmarks" / script).is_file() and (REPO / "benchmarks" / json_name).is_file(), name
        svg = (site / "benchmarks" / "plots" / f"{name}.svg").read_text()
        assert svg.startswith("<?xml") and f"benchmarks/{json_name}" in svg, name
    # a number of the JSON is a label of the figure: change the JSON, the figure changes
    data = json.loads((REPO / "benchmarks" / "onnx_vs_keras.json").read_text())
    svg = (site / "benchmarks" / "plots" / "onnx_vs_keras.svg").read_text()
    assert f"{data['rows'][0]['keras_ms']:.1f}" in svg
    page = (site / "benchmarks" / "index.html").read_text()
    assert all(f"plots/{name}.svg" in page for name in plots.FIGURES)


def _artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ["TLTF_TEST_ARTIFACTS"]) / "docs" if os.environ.get("TLTF_TEST_ARTIFACTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def served(site):
    """The built site over HTTP on a free local port (its links are folders: guides/serving/), by the web
    target's own static server."""
    from tltf.export.web import serve_folder

    with serve_folder(site) as url:
        yield url


def test_site_renders_in_chromium(served, tmp_path):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright

    out = _artifacts(tmp_path)
    pages = {
        "home": ("", "transfer learning for Keras 3",
                 ["pip install", "tltf fit --data photos/", "tltf export", "tltf serve"]),
        "guide": ("guides/small-data/", "Small data", ["--lp-init", "scikit-learn"]),
        "cli": ("reference/cli/", "Command-line reference", ["--max-batch", "--select-instances"]),
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            for name, (path, title, texts) in pages.items():
                assert page.goto(served + path).ok, path
                heading = page.locator("article h1").first
                assert heading.is_visible() and title in heading.inner_text(), (name, heading.inner_text())
                for text in texts:
                    assert page.get_by_text(text, exact=False).first.is_visible() or (
                        text in page.locator("article").inner_text()), (name, text)
                assert page.locator("nav.md-nav").first.is_visible()  # Material's navigation drew
                page.screenshot(path=str(out / f"{name}.png"), full_page=False)
                assert (out / f"{name}.png").stat().st_size > 10_000
            # the CLI reference lists every command, and the home page's table links into the guides
            page.goto(served + "reference/cli/")
            body = page.locator("article").inner_text()
            assert all(name in body for name in COMMANDS)
            page.goto(served)
            page.locator("article").get_by_role("link", name="Serving", exact=True).first.click()
            page.wait_for_url("**/guides/serving/")
            assert "Serving" in page.locator("article h1").first.inner_text()
            assert not errors, errors
        finally:
            browser.close()
