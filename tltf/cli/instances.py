"""``tltf instances MODEL --data D [--val V] --out DIR``: which training images hurt the validation loss (wrong
labels, off-domain images): ``DIR/scores.csv`` (most harmful first) and ``DIR/harmful.png``."""

from __future__ import annotations

import json

import click

from tltf.cli import options


@click.command("instances")
@click.argument("model", type=click.Path(dir_okay=False))
@options.data()
@click.option("--val", help="Validation data to measure the loss on (same forms as --data; all its labelled "
              "images). Default: --data's own validation split, else --val-split of it held out.")
@click.option("--out", required=True, help="Folder for scores.csv and harmful.png.")
@click.option("--top", type=int, default=64, show_default=True, help="Images on the contact sheet.")
@options.val_split
@options.seed
@options.batch_size
@options.data_dir
@click.option("--l2", type=float, default=0.1, show_default=True,
              help="L2 coefficient of the softmax head (on standardised features, mean loss).")
@click.option("--val-loss", type=click.Choice(["error", "cross-entropy"]), default="error", show_default=True,
              help="The validation loss scored: the expected error 1 - p(label) (robust to wrong validation labels) "
              "or the cross-entropy.")
@click.option("--refit/--no-refit", default=True, show_default=True,
              help="Refit the softmax head to its optimum on the features before scoring (the influence "
              "approximation assumes one).")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Read/write the feature cache ($TLTF_CACHE/features).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(model, data, val, out, top, val_split, seed, batch_size, data_dir, l2, val_loss, refit, cache,
            as_json):
    """Score every training image of --data by how much the validation loss would drop without it (influence
    functions on MODEL's softmax head over its penultimate features): the top of scores.csv is where wrong labels
    and off-domain images gather. Score > 0: removing it is predicted to help."""
    from pathlib import Path

    from tltf.atomic import make_folder
    from tltf.errors import TltfError

    if top < 1:
        raise TltfError(f"--top {top}: must be at least 1")
    if batch_size < 1:
        raise TltfError(f"--batch-size {batch_size}: must be at least 1")
    folder = make_folder(out, "--out")
    from tltf.instances import auto_drop_count, score_data
    from tltf.instances.report import write_contact_sheet, write_scores_csv

    scores, train = score_data(model, data, val, val_split, seed, data_dir,
                               l2=l2, val_loss=val_loss.replace("-", "_"), refit=refit, batch_size=batch_size,
                               cache=cache)
    csv_path = write_scores_csv(Path(folder) / "scores.csv", scores)
    png_path = write_contact_sheet(Path(folder) / "harmful.png", scores, train, top)
    drop = auto_drop_count(scores.scores)
    rows = scores.rows()
    result = {"scores": str(csv_path), "contact_sheet": str(png_path), "num_train": len(scores),
              "num_val": scores.info["num_val"], "positive": int((scores.scores > 0).sum()), "auto_drop": drop,
              "top": rows[:min(10, len(rows))], "info": scores.info}
    if as_json:
        click.echo(json.dumps(result))
        return
    info = scores.info
    click.echo(f"scored {len(scores)} training images against {info['num_val']} validation images "
               f"({info['num_features']} features; {info['feature_seconds'] + info['head_seconds']:.1f}s)")
    click.echo(f"{result['positive']} would lower the validation loss if removed; auto would drop {drop}")
    for rank, row in enumerate(rows[:10], 1):
        click.echo(f"{rank:>3}. {row['file']}  given {row['label']}, predicted {row['predicted']}  "
                   f"score {row['score']:.3g}")
    click.echo(f"wrote {csv_path} and {png_path}")
