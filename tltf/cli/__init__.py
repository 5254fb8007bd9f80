"""The ``tltf`` command line: a thin click layer over :mod:`tltf.api`.

Each subcommand lives in its own module ``tltf/cli/<name>.py`` exposing a click command called ``command``; it is
imported only when used, and no command module imports TensorFlow at import time, so ``tltf --help`` and any
``tltf CMD --help`` start without it (a test runs them with TensorFlow unimportable). The runtime commands
(:data:`RUNTIME_COMMANDS`: predict, serve, bench, drift) load it only for a ``.keras`` model or a training-side
option; the others load it (quietly, with tltf's Keras objects registered: :mod:`tltf.keras_objects`) just before
they run. Without the training stack installed, they stop with a one-line error that says how to add it.
:class:`TltfError` from the library becomes a one-line ``error: ...`` on stderr and exit status 2, never a
traceback.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

import click

from tltf.cli import help_groups
from tltf.errors import TltfError

# name -> (module, one-line help shown by `tltf --help`)
COMMANDS = {
    "fit": ("fit", "Train a classifier on a pretrained backbone (staged fine-tuning, DANN)."),
    "evaluate": ("evaluate", "Accuracy, per-class accuracy and confusion matrix of a model on data."),
    "predict": ("predict", "Top classes for image files, with a .keras or .onnx model."),
    "backbones": ("backbones", "List the backbones of the registry."),
    "export": ("export", "Export a model to ONNX with a parity gate (fp32, fp16, int8)."),
    "bench": ("bench", "Latency and throughput: onnxruntime vs Keras."),
    "weights": ("weights", "Import pretrained checkpoints (torchvision .pth) into Keras backbones."),
    "features": ("features", "Extract frozen-backbone features (CNN codes) to a .npz."),
    "compare": ("compare", "Compare transfer strategies against training from scratch."),
    "advise": ("advise", "Recommend a transfer strategy for a dataset."),
    "instances": ("instances", "Score each training image by how much it hurts validation loss (label noise)."),
    "fewshot": ("fewshot", "Few-shot episodes (N-way K-shot) with prototype classifiers on a frozen backbone."),
    "drift": ("drift", "Does new data still look like the reference data? MMD and classifier tests, label shift."),
    "serve": ("serve", "Serve ONNX models over the Open Inference Protocol (KServe v2) with dynamic batching."),
    "package": ("package", "A Triton model repository and a KServe InferenceService from an ONNX file."),
}

#: commands that run on the inference runtime alone (onnxruntime, numpy, Pillow) when given an .onnx model
RUNTIME_COMMANDS = {"predict", "serve", "bench", "drift", "package"}


def _with_training_stack(name: str, command: click.Command) -> click.Command:
    """``command`` whose callback first loads the training stack (not at ``--help``)."""
    if getattr(command, "_tltf_training", False):
        return command
    callback = command.callback

    @functools.wraps(callback)
    def run(*args, **kwargs):
        from tltf.extras import training_stack

        training_stack(f"tltf {name}")
        return callback(*args, **kwargs)

    command.callback = run
    command._tltf_training = True
    return command


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name, (module, _) in COMMANDS.items() if _module_exists(module)]

    def get_command(self, ctx, name):
        if name not in COMMANDS or not _module_exists(COMMANDS[name][0]):
            return None
        command = help_groups.grouped(name, importlib.import_module(f"tltf.cli.{COMMANDS[name][0]}").command)
        return command if name in RUNTIME_COMMANDS else _with_training_stack(name, command)

    def format_commands(self, ctx, formatter):
        help_groups.format_command_groups([(name, COMMANDS[name][1]) for name in self.list_commands(ctx)], formatter)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except TltfError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except OSError as e:  # a full disk or a vanished folder under Keras' own writers (CSV log, TensorBoard)
            from tltf.atomic import is_write_error, write_failed

            if not is_write_error(e):
                raise
            click.echo(f"error: {write_failed(e.filename or 'output', e)}", err=True)
            ctx.exit(2)


def _module_exists(module: str) -> bool:
    return os.path.exists(os.path.join(os.path.dirname(__file__), f"{module}.py"))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tltf")
def main():
    """tltf: transfer learning for Keras 3 / TensorFlow, from a pretrained backbone to an ONNX file."""


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
