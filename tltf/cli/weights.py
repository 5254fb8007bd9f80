"""``tltf weights``: import torchvision checkpoints into Keras classifiers, list the supported architectures."""

import click


@click.group("weights")
def command():
    """Import pretrained checkpoints (torchvision .pth) into Keras backbones."""


@command.command("import")
@click.option("--from", "source", type=click.Choice(["torchvision"]), default="torchvision", show_default=True,
              help="Where the checkpoint comes from.")
@click.option("--arch", required=True, help="Architecture of the checkpoint (see `tltf weights list`).")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The Keras classifier to write (.keras).")
@click.option("--image-size", default=224, show_default=True, type=int,
              help="Input size of the classifier (odd sizes, e.g. 225, reproduce torchvision exactly).")
def import_(source, arch, checkpoint, out, image_size):
    """Convert CHECKPOINT (.pth, zip or legacy format; read without torch) into a complete ImageNet classifier.

    The result runs with `tltf predict OUT IMAGE…`; `tltf fit --weights OUT` starts from its backbone with the
    checkpoint's BatchNorm epsilon and input normalisation.
    """
    from tltf.weights.torchvision import arch_spec, import_torchvision

    spec = arch_spec(arch)
    model = import_torchvision(checkpoint, spec.arch, out, image_size=image_size)
    click.echo(f"wrote {out}: torchvision {spec.arch} -> {model.name} ({model.count_params():,} parameters, "
               f"{model.output_shape[-1]} classes, input {image_size}x{image_size})")


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def list_(as_json):
    """Architectures `tltf weights import` converts (and those it refuses, with the reason)."""
    import json

    from tltf.weights.torchvision import NOT_SUPPORTED, SUPPORTED

    rows = [{"source": "torchvision", "arch": s.arch, "backbone": s.backbone, "supported": True,
             "checkpoint": s.checkpoint, "note": s.note} for s in SUPPORTED.values()]
    rows += [{"source": "torchvision", "arch": a, "backbone": None, "supported": False, "checkpoint": None,
              "note": why} for a, why in NOT_SUPPORTED.items()]
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("source", "arch", "backbone", "supported", "note", box=None)
    for r in rows:
        table.add_row(r["source"], r["arch"], r["backbone"] or "-", "yes" if r["supported"] else "no", r["note"])
    Console().print(table)
