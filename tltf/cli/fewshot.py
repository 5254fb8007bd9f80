"""``tltf fewshot --data D --shots 1,5 --ways N --episodes E [--json]``: N-way K-shot episodes on frozen features."""

from __future__ import annotations

import json

import click

from tltf.cli import options


@click.command("fewshot")
@options.data()
@options.backbone
@options.weights()
@options.image_size
@click.option("--features", type=click.Choice(["auto", "final", "multilevel"]), default="auto", show_default=True,
              help="Backbone features (auto: multilevel for pretrained weights).")
@click.option("--shots", default="1,5", show_default=True, help="Support images per class, comma-separated.")
@click.option("--ways", type=int, help="Classes per episode [default: all, at most 5].")
@click.option("--episodes", type=int, default=600, show_default=True)
@click.option("--queries", type=int, default=15, show_default=True, help="Query images per class and episode.")
@options.batch_size
@options.seed
@options.data_dir
@click.option("--json", "as_json", is_flag=True,
              help='Print {"results": [{"shots", "ways", "episodes", "mean", "ci95", ...}]} on stdout.')
def command(data, backbone, weights, image_size, features, shots, ways, episodes, queries, batch_size, seed,
            data_dir, as_json):
    """Few-shot accuracy (mean and 95 % interval over episodes) of a prototype classifier on --data's images,
    beside the plain nearest class mean of L2-normalised features of the same backbone."""
    from tltf.fewshot.protocol import parse_shots, run_fewshot

    parse_shots(shots)  # a bad --shots is one line before any image is read
    report = run_fewshot(data, shots, ways, episodes, queries, backbone, weights, image_size, features, batch_size,
                         seed, data_dir, verbose=not as_json)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(f"{report['images']} images, {len(report['classes'])} classes; {report['backbone']} "
               f"({report['weights']}, {report['features']} features) at {report['image_size'][0]} px")
    click.echo(f"{'shots':>5} {'ways':>5} {'episodes':>9} {'prototypes':>17} {'nearest mean (L2)':>19}")
    for r in report["results"]:
        click.echo(f"{r['shots']:>5} {r['ways']:>5} {r['episodes']:>9} {r['mean']:>10.3f} ± {r['ci95']:.3f} "
                   f"{r['baseline_mean']:>12.3f} ± {r['baseline_ci95']:.3f}")
