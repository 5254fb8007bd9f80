"""``tltf compare``: flags -> :func:`tltf.compare.compare`; prints the markdown table."""

from __future__ import annotations

import click

from tltf.cli import options


@click.command("compare")
@options.data()
@options.backbone
@options.weights(help="Pretrained weights of the transfer strategies (scratch always uses none): "
                      + options.WEIGHTS_HELP)
@click.option("--strategies", default="scratch,feature,finetune,gradual,l2sp",
              help="Comma-separated: scratch, feature, finetune, gradual, l2sp[:COEF], lwf[:WEIGHT].")
@click.option("--target-data", help="Domain adaptation: the unlabelled target images (with --adapt).")
@click.option("--target-labels-for-eval", is_flag=True, default=None,
              help="The target data has labels: measure each method's target accuracy with them (never to train).")
@click.option("--adapt", help="Compare domain-adaptation methods instead of strategies: comma-separated from none "
              "(source-only baseline), dann, mmd, coral, adabn, METHOD+adabn; e.g. none,dann,mmd,coral,adabn.")
@click.option("--criterion", type=click.Choice(["auto", "dev_risk", "snd", "target_entropy", "domain_separability"]),
              help="With --adapt: how a method is selected without target labels: auto (the measured rule: "
                   "source-only left out when its features separate the domains, then the best mean rank by DEV, "
                   "domain separability and target entropy, DEV left out when its weights are degenerate; see "
                   "tltf.adapt.selection) or one criterion alone [default: auto].")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per strategy (0, 1, …).")
@click.option("--epochs", type=int, help="Epoch budget of every run [default: 6].")
@options.image_size
@options.batch_size
@click.option("--learning-rate", "--lr", "learning_rate", type=float, default=1e-3, show_default=True)
@options.val_split
@click.option("--augment", default="auto", show_default=True,
              help="Subset of flip,crop,color, none, or auto (flips for colour images only).")
@options.data_dir
@click.option("--out", required=True, help="Comparison folder (one run folder per strategy and seed under runs/).")
@click.option("--overwrite", is_flag=True, help="Retrain every run even where a finished one exists.")
@click.option("--verbose", is_flag=True, help="Per-epoch progress of each run.")
def command(data, backbone, weights, strategies, target_data, target_labels_for_eval, adapt, criterion, seeds, epochs,
            image_size, batch_size, learning_rate, val_split, augment, data_dir, out, overwrite, verbose):
    """Compare transfer strategies with training from scratch: same splits, seeds and epoch budget."""
    from tltf.compare import compare, format_markdown

    result = compare(data, out, backbone=backbone, weights=weights, strategies=strategies, seeds=seeds,
                     epochs=epochs, image_size=image_size, batch_size=batch_size, overwrite=overwrite,
                     verbose=2 if verbose else 0, log=lambda line: click.echo(line, err=True),
                     learning_rate=learning_rate, val_split=val_split, augment=augment, data_dir=data_dir,
                     adapt=adapt, criterion=criterion,
                     **({"target_data": target_data} if target_data else {}),
                     **({"target_labels_for_eval": True} if target_labels_for_eval else {}))
    click.echo(format_markdown(result))
    warning = (result.get("selection") or {}).get("warning")
    if warning:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"\nsaved {out}/compare.md, compare.json, curves.png")
