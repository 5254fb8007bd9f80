"""``tltf advise``: flags -> :func:`tltf.advise.advise`; prints the measurements and the recommendation."""

from __future__ import annotations

import click

from tltf.cli import options


@click.command("advise")
@options.data()
@options.backbone
@options.weights("torchvision:mobilenet_v2", "The pretrained weights whose source domain the data is measured "
                "against.")
@options.image_size
@click.option("--max-images", type=int, default=1000, show_default=True,
              help="Labelled images sampled (stratified) for the linear probe.")
@click.option("--reference", help="Source-like images for the proxy-A-distance (a --data spec) [default: the "
              "ImageNet photos of the foolbox wheel and scikit-image's colour photos].")
@options.seed
@options.data_dir
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def command(data, backbone, weights, image_size, max_images, reference, seed, data_dir, as_json):
    """Recommend a transfer strategy: data size x closeness to the source domain (the size x similarity table)."""
    import json

    from tltf.advise import advise, format_report
    from tltf.errors import TltfError

    if max_images < 10:
        raise TltfError(f"--max-images {max_images}: at least 10")
    report = advise(data, backbone=backbone, weights=weights, image_size=image_size, seed=seed,
                    max_images=max_images, data_dir=data_dir, reference=reference,
                    log=None if as_json else (lambda line: click.echo(line, err=True)))
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))
