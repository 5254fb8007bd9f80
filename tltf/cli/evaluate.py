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
    click.echo(f"accuracy {result['accuracy']:.4f} on {result['n']} images ({result['split']} split)")
    for name, acc in result["per_class"].items():
        click.echo(f"  {name:<20} {'-' if acc is None else f'{acc:.3f}'}")
    import numpy as np

    click.echo(format_confusion(np.array(result["confusion"]), result["classes"]))
