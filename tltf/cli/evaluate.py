"""``tltf evaluate``: accuracy, per-class accuracy and confusion matrix."""

from __future__ import annotations

import json

import click


@click.command("evaluate")
@click.argument("model", type=click.Path())
@click.option("--data", required=True, help="Image folder, .npz, tfds:NAME[:SPLIT] or builtin:shapes.")
@click.option("--split", type=click.Choice(["auto", "test", "val", "train", "all"]), default="auto",
              show_default=True, help="auto: the test split if there is one, else every image.")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--data-dir", help="tensorflow-datasets data folder.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(model, data, split, batch_size, data_dir, as_json):
    """Evaluate MODEL (.keras) on --data."""
    from tltf.api import evaluate
    from tltf.reporting import format_confusion

    result = evaluate(model, data, split, batch_size, data_dir)
    if as_json:
        click.echo(json.dumps(result))
        return
    import numpy as np

    if "tasks" in result:  # a multitask model
        click.echo(f"mean accuracy of the tasks {result['accuracy']:.4f}, every task right {result['all_correct']:.4f}"
                   f" on {result['n']} images ({result['split']} split)")
        parts = result["tasks"].items()
    else:
        click.echo(f"accuracy {result['accuracy']:.4f} on {result['n']} images ({result['split']} split)")
        parts = [(None, result)]
    for task, part in parts:
        if task is not None:
            click.echo(f"task {task}: accuracy {part['accuracy']:.4f}")
        for name, acc in part["per_class"].items():
            click.echo(f"  {name:<20} {'-' if acc is None else f'{acc:.3f}'}")
        click.echo(format_confusion(np.array(part["confusion"]), part["classes"]))
