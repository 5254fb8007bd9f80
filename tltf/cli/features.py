"""``tltf features``: frozen-backbone features ("CNN codes") to a ``.npz``, and a linear probe on them."""

from __future__ import annotations

import json

import click

from tltf.cli import options


@click.command("features")
@options.data()
@options.backbone
@options.weights()
@options.image_size
@options.batch_size
@options.val_split
@options.seed
@options.data_dir
@click.option("--out", type=click.Path(dir_okay=False), help="Write x/y per split and class_names to this .npz.")
@click.option("--probe", is_flag=True, help="Train a linear classifier (L2-regularised softmax regression) on the "
              "features and print its accuracy (saved beside --out as NAME.probe.json).")
@click.option("--l2", type=float, default=1e-3, show_default=True, help="Linear probe: L2 coefficient.")
@click.option("--probe-epochs", type=int, default=100, show_default=True)
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Read/write the feature cache ($TLTF_CACHE/features).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def command(data, backbone, weights, image_size, batch_size, val_split, seed, data_dir, out, probe, l2,
            probe_epochs, cache, as_json):
    """Extract frozen-backbone features of every split of --data (and optionally probe them linearly)."""
    from pathlib import Path

    from tltf.errors import TltfError
    from tltf.strategies.features import extract_features, linear_probe

    if not out and not probe:
        raise TltfError("--out FILE.npz or --probe is required (nothing to do otherwise)")
    if out and not str(out).endswith(".npz"):
        raise TltfError(f"--out {out}: must end in .npz")
    feats = extract_features(data, backbone, weights, image_size, batch_size, val_split, seed, data_dir,
                             cache=cache, verbose=not as_json)
    result = {"backbone": feats.backbone, "weights": feats.weights, "image_size": list(feats.image_size),
              "classes": feats.class_names, "splits": feats.info}
    if out:
        feats.save(out)
        result["out"] = str(out)
    if probe:
        result["probe"] = linear_probe(feats, l2=l2, epochs=probe_epochs, seed=seed)
        if out:
            path = Path(out).with_suffix(".probe.json")
            from tltf.reporting import write_json

            write_json(path, {**result["probe"], "features": str(out)})
            result["probe_file"] = str(path)
    if as_json:
        click.echo(json.dumps(result))
        return
    if out:
        shapes = ", ".join(f"{name} {x.shape[0]}x{x.shape[1]}" for name, x in feats.x.items())
        click.echo(f"saved {out} ({shapes}; {len(feats.class_names)} classes)")
    if probe:
        p = result["probe"]

        def cell(value):
            return "-" if value is None else f"{value:.3f}"

        click.echo(f"linear probe (softmax regression, l2={l2:g}, {p['epochs']} epochs): train "
                   f"{cell(p['train_accuracy'])} val {cell(p['val_accuracy'])} test {cell(p['test_accuracy'])} "
                   f"(majority class {p['chance']:.3f})")
