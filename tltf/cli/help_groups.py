"""Grouped ``--help``: each command's options shown under named groups, the most used first.

One table, :data:`OPTION_GROUPS`, names the groups of every command; :func:`grouped` gives a command a ``--help``
drawn from it, and :func:`format_command_groups` sorts ``tltf --help``'s command list into :data:`COMMAND_GROUPS`.
Nothing here changes how a command parses its arguments: only the help text.

- The help is drawn by rich-click (panels per group) when it is installed, and by click's own formatter (one section
  per group) otherwise, so the runtime-only install keeps the same groups. rich-click (and rich) are imported only
  when a help page is drawn: ``tltf CMD ...`` and ``tltf --help`` do not load them (measured on the 2-core machine,
  ``python -X importtime -c "import rich_click"``: 41-133 ms cumulative, most of it rich; ``import tltf.cli``: 28 ms).
- An option that no group names (a new one) is still shown, under "Options" after the groups; a name in a group that
  the command does not have is ignored. ``tests/test_docs.py`` checks that ``fit``'s groups match the settings' own
  groups (:data:`tltf.training.settings.GROUPS`) and that every option of every command is shown.
"""

from __future__ import annotations

import click

#: command -> [(group title, [option names as written, "--x"; arguments by their name, "MODEL"])], most used first.
#: fit's groups are the settings' groups (tltf.training.settings.GROUPS: data, model, schedule, method, runtime; the
#: method settings in two, runtime as "Run folder and recipe" and "Hardware"); tests/test_docs.py checks they agree.
OPTION_GROUPS: dict[str, list[tuple[str, list[str]]]] = {
    "fit": [
        ("Data", ["--data", "--val-split", "--augment", "--data-dir", "--target-data", "--target-labels-for-eval",
                  "--eval-data"]),
        ("Model", ["--backbone", "--weights", "--image-size", "--dropout", "--features", "--train-bn", "--tasks",
                   "--task-weights", "--attributes"]),
        ("Schedule", ["--stage", "--epochs", "--lr", "--learning-rate", "--batch-size", "--plan", "--optimizer",
                      "--seed", "--refit"]),
        ("Run folder and recipe", ["--out", "--config", "--dry-run", "--overwrite", "--quiet"]),
        ("Method: head, layers, regularisation", ["--lp-init", "--lp-views", "--freeze-until", "--reinit-top",
                                                  "--l2sp", "--lwf", "--lwf-temperature", "--select-instances",
                                                  "--feature-cache", "--method"]),
        ("Method: domain adaptation", ["--adapt", "--compare-source-only", "--lambda-max", "--gamma", "--anneal-lr",
                                       "--ema", "--align-weight", "--target-entropy"]),
        ("Hardware", ["--precision", "--jit", "--distribute"]),
    ],
    "export": [
        ("Export", ["MODEL", "--onnx", "--out", "--opset", "--features"]),
        ("Precision", ["--fp16", "--int8", "--calibration-data", "--max-calibration"]),
        ("Parity gate", ["--max-diff", "--min-agreement"]),
        ("Edge targets and runtimes", ["--target", "--platform", "--type-reduction", "--slim", "--openvino-precision"]),
        ("Output", ["--json"]),
    ],
    "bench": [
        ("What to measure", ["MODELS", "--keras", "--batch-sizes", "--provider", "--threads", "--xla"]),
        ("Other runtimes", ["--runtime", "--openvino-precision"]),
        ("How long", ["--warmup", "--iterations", "--seconds"]),
        ("Output", ["--json", "--plot"]),
    ],
    "serve": [
        ("Models and address", ["MODELS", "--model-repository", "--host", "--port", "--provider", "--threads"]),
        ("Batching", ["--max-batch", "--max-delay-ms"]),
        ("Limits", ["--max-queue", "--max-queue-mb", "--max-body-mb", "--request-timeout-ms", "--header-timeout-s",
                    "--body-timeout-s"]),
        ("Logging", ["--log-level", "--access-log"]),
    ],
    "predict": [
        ("Model and images", ["MODEL", "IMAGES", "--top", "--json"]),
        ("Batch scoring on Ray Data", ["--data", "--engine", "--out", "--ray-address", "--ray-cpus"]),
    ],
    "package": [
        ("Triton model repository", ["MODEL", "--triton", "--name", "--bench-json", "--batch-sizes"]),
        ("KServe", ["--kserve", "--storage-uri", "--namespace"]),
    ],
    "compare": [
        ("Data and model", ["--data", "--backbone", "--weights", "--image-size", "--val-split", "--augment",
                            "--data-dir", "--target-data", "--target-labels-for-eval"]),
        ("What to compare", ["--strategies", "--adapt", "--criterion", "--seeds", "--epochs", "--lr", "--batch-size"]),
        ("Output", ["--out", "--overwrite", "--verbose"]),
    ],
    "features": [
        ("Data and model", ["--data", "--backbone", "--weights", "--image-size", "--val-split", "--seed",
                            "--data-dir", "--batch-size"]),
        ("Linear probe", ["--probe", "--l2", "--probe-epochs"]),
        ("Output", ["--out", "--cache", "--json"]),
    ],
    "drift": [
        ("Data", ["--reference", "--data", "--max-samples", "--data-dir"]),
        ("Feature space", ["--model", "--backbone", "--weights", "--image-size", "--batch-size", "--cache"]),
        ("Tests", ["--alpha", "--permutations", "--seed"]),
        ("Output", ["--out", "--json"]),
    ],
    "instances": [
        ("Data and model", ["MODEL", "--data", "--val", "--val-split", "--seed", "--batch-size", "--data-dir"]),
        ("Scoring", ["--l2", "--val-loss", "--refit", "--cache"]),
        ("Output", ["--out", "--top", "--json"]),
    ],
    "fewshot": [
        ("Data and model", ["--data", "--backbone", "--weights", "--image-size", "--features", "--batch-size",
                            "--data-dir"]),
        ("Episodes", ["--ways", "--shots", "--queries", "--episodes", "--seed"]),
        ("Output", ["--json"]),
    ],
    "advise": [
        ("Data and model", ["--data", "--backbone", "--weights", "--image-size", "--max-images", "--reference",
                            "--seed", "--data-dir"]),
        ("Output", ["--json"]),
    ],
}

#: ``tltf --help``: command groups, in order; a command not listed here is shown under "Other commands"
COMMAND_GROUPS: list[tuple[str, list[str]]] = [
    ("Train", ["fit", "evaluate", "compare", "advise"]),
    ("Ship", ["export", "predict", "serve", "bench", "package"]),
    ("Data and models", ["instances", "fewshot", "drift", "features", "backbones", "weights"]),
]

DEFAULT_GROUP = "Options"


def grouped(name: str, command: click.Command) -> click.Command:
    """``command`` with a ``--help`` that shows its options under :data:`OPTION_GROUPS`\\[name] (idempotent).

    A command without groups gets the same look, its options under "Options"."""
    if getattr(command, "_tltf_grouped_help", False):
        return command
    command.get_help = lambda ctx: _help(name, command, ctx)  # instance attribute: parsing is untouched
    command._tltf_grouped_help = True
    return command


def option_groups(name: str, command: click.Command) -> list[tuple[str, list[click.Parameter]]]:
    """The groups of ``command``'s parameters as shown: the listed groups, then "Options" with every other one."""
    by_name = {}
    for param in command.get_params(click.Context(command, info_name=name)):
        if param.hidden if isinstance(param, click.Option) else False:
            continue
        for key in _keys(param):
            by_name.setdefault(key, param)
    shown: list[tuple[str, list[click.Parameter]]] = []
    seen: set[int] = set()
    for title, names in OPTION_GROUPS.get(name, []):
        params = []
        for key in names:
            param = by_name.get(key)
            if param is not None and id(param) not in seen:
                seen.add(id(param))
                params.append(param)
        if params:
            shown.append((title, params))
    rest = [p for p in dict.fromkeys(by_name.values()) if id(p) not in seen]
    if rest:
        shown.append((DEFAULT_GROUP, rest))
    return shown


def _keys(param: click.Parameter) -> list[str]:
    if isinstance(param, click.Argument):
        return [param.human_readable_name.upper(), param.name]
    return [*param.opts, *param.secondary_opts, param.name]


def _help(name: str, command: click.Command, ctx: click.Context) -> str:
    try:
        import rich_click  # noqa: F401
    except ImportError:
        return _plain_help(name, command, ctx)
    return _rich_help(name, command, ctx)


def _plain_help(name: str, command: click.Command, ctx: click.Context) -> str:
    formatter = ctx.make_formatter()
    command.format_usage(ctx, formatter)
    command.format_help_text(ctx, formatter)
    for title, params in option_groups(name, command):
        rows = [row for row in (p.get_help_record(ctx) for p in params) if row is not None]
        if rows:
            with formatter.section(title):
                formatter.write_dl(rows)
    command.format_epilog(ctx, formatter)
    return formatter.getvalue().rstrip("\n")


def _rich_help(name: str, command: click.Command, ctx: click.Context) -> str:
    from rich_click import RichCommand
    from rich_click.rich_context import RichContext
    from rich_click.rich_panel import RichOptionPanel

    shown = RichCommand(name=command.name, params=command.params, help=command.help, epilog=command.epilog,
                        short_help=command.short_help, options_metavar=command.options_metavar,
                        context_settings=command.context_settings)
    for title, params in option_groups(name, command):
        if title != DEFAULT_GROUP:
            shown.add_panel(RichOptionPanel(name=title, options=[p.name for p in params]))
    rich_ctx = RichContext(shown, info_name=ctx.info_name, parent=ctx.parent,
                           terminal_width=ctx.terminal_width, max_content_width=ctx.max_content_width)
    rich_ctx.params = ctx.params
    formatter = rich_ctx.make_formatter()
    shown.format_help(rich_ctx, formatter)
    return formatter.getvalue().rstrip("\n")


def format_command_groups(rows: list[tuple[str, str]], formatter: click.HelpFormatter) -> None:
    """``tltf --help``'s commands (``rows``: name, one-line help) under :data:`COMMAND_GROUPS`, in click's format."""
    helps = dict(rows)
    placed: set[str] = set()
    for title, names in [*COMMAND_GROUPS, ("Other commands", [n for n, _ in rows])]:
        group = [(n, helps[n]) for n in names if n in helps and n not in placed]
        placed.update(n for n, _ in group)
        if group:
            with formatter.section(title):
                formatter.write_dl(group)
