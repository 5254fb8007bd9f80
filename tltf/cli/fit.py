"""``tltf fit``: flags -> :class:`tltf.api.FitConfig` -> :func:`tltf.api.fit`."""

from __future__ import annotations

import click


@click.command("fit")
@click.option("--config", "recipe", type=click.Path(dir_okay=False),
              help="A pipelines/*.yaml recipe; flags given on the command line override its values.")
@click.option("--dry-run", is_flag=True, help="Validate the settings and print the stage plan; do not train.")
@click.option("--data", help="Image folder, .npz, tfds:NAME[:SPLIT] or builtin:shapes.")
@click.option("--backbone", default="mobilenet_v2", show_default=True, help="Registry name (see `tltf backbones`).")
@click.option("--stage", type=click.Choice(["feature", "finetune", "gradual", "scratch"]), default="gradual", show_default=True,
              help="Stage plan preset (ignored with --plan).")
@click.option("--plan", type=click.Path(dir_okay=False), help="Stage plan YAML file.")
@click.option("--epochs", type=int, help="Total epochs, divided among the stages [default: 6 or the plan's].")
@click.option("--out", default="runs/run", show_default=True, help="Run folder.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet, none, or a .keras/.h5 file.")
@click.option("--image-size", type=int, help="Input size in pixels [default: the backbone's].")
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option("--learning-rate", "--lr", "learning_rate", type=float, default=1e-3, show_default=True,
              help="Learning rate of the first stage (the head).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val-split", type=float, default=0.2, show_default=True,
              help="Fraction of train held out (stratified) when the data has no validation split.")
@click.option("--train-bn/--freeze-bn", "train_bn", default=None,
              help="Let BatchNorm update its statistics [default: only with --weights none].")
@click.option("--dropout", type=float, default=0.2, show_default=True)
@click.option("--augment", default="flip,crop,color", show_default=True, help="Subset of flip,crop,color or none.")
@click.option("--optimizer", default="adam", show_default=True, help="adam, adamw or sgd.")
@click.option("--data-dir", help="tensorflow-datasets data folder.")
@click.option("--jit/--no-jit", default=None, help="XLA-compile the train step [default: on GPU only].")
@click.option("--precision", default="float32", show_default=True, help="float32, mixed or mixed_bfloat16.")
@click.option("--overwrite", is_flag=True, help="Start over even if --out holds a run.")
@click.option("--quiet", is_flag=True, help="No per-epoch progress output.")
@click.pass_context
def command(ctx, recipe, dry_run, quiet, overwrite, **options):
    """Train a classifier on a pretrained backbone with a staged plan (head, top blocks, all)."""
    import json

    from click.core import ParameterSource

    from tltf.api import FitConfig, describe, fit, load_recipe
    from tltf.errors import TltfError

    values = load_recipe(recipe) if recipe else {}
    for name, value in options.items():  # flags typed on the command line win over the recipe
        if name not in values or ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
            values[name] = value
    values = {k: v for k, v in values.items() if v is not None or k in ("train_bn", "jit", "epochs")}
    if not values.get("data"):
        raise TltfError("--data is required (or a --config recipe that sets data)")
    config = FitConfig.from_dict(values, source=f"--config {recipe}" if recipe else "options")
    if dry_run:
        click.echo(json.dumps(describe(config), indent=2, default=str))
        return
    metrics = fit(config, overwrite=overwrite, verbose=0 if quiet else 2)
    click.echo(f"\n{'stage':<10}{'epochs':>7}{'trainable':>12}{'lr':>10}{'val_acc':>9}")
    for s in metrics["stages"]:
        acc = "-" if s["val_accuracy"] is None else f"{s['val_accuracy']:.3f}"
        click.echo(f"{s['name']:<10}{s['epochs']:>7}{s['trainable_params']:>12,}{s['learning_rate']:>10.1e}{acc:>9}")
    summary = f"val_accuracy={metrics['val_accuracy']:.3f}" if metrics["val_accuracy"] is not None else ""
    if "test_accuracy" in metrics:
        summary += f" test_accuracy={metrics['test_accuracy']:.3f}"
    click.echo(f"{summary}\nsaved {config.out}/model.keras, metrics.json, history.csv, curves.png")
