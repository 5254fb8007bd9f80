"""``tltf drift``: does new data still look like the reference data? MMD and classifier tests, label shift.

Exit status: 0 no drift, 1 drift (MMD p-value below ``--alpha``), 2 bad input; so a scheduler or CI job can act on
it without parsing the output. With ``--model FILE.onnx`` (exported with ``--features``) and image folders it runs
on the inference runtime, without TensorFlow (:mod:`tltf.drift.detect`).
"""

from __future__ import annotations

import json

import click

from tltf.cli import options


@click.command("drift")
@click.option("--reference", required=True, help="The data the model was trained on (or any baseline): "
              + options.DATA_HELP[0].lower() + options.DATA_HELP[1:])
@click.option("--data", required=True, help="The new data: the same kinds of spec, or a folder of unlabelled images.")
@click.option("--model", type=click.Path(dir_okay=False), help="A tltf .keras classifier, or its .onnx export made "
              "with tltf export --onnx --features (runs without TensorFlow on image folders): features from its "
              "penultimate layer, and label shift (BBSE; needs a labelled --reference).")
@options.backbone
@options.weights(help="Without --model: " + options.WEIGHTS_HELP)
@options.image_size
@click.option("--max-samples", type=int, default=1000, show_default=True,
              help="At most this many images of each side, drawn at random (seeded).")
@options.seed
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="Significance level: drift when the MMD test's p-value is below it.")
@click.option("--permutations", type=int, default=1000, show_default=True, help="Of the MMD permutation test.")
@options.batch_size
@options.data_dir
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Read/write the feature cache ($TLTF_CACHE/features).")
@click.option("--out", type=click.Path(file_okay=False), help="Folder for drift.json and most_different.png.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
def command(ctx, reference, data, model, backbone, weights, image_size, max_samples, seed, alpha, permutations,
            batch_size, data_dir, cache, out, as_json):
    """Compare --data with --reference: a kernel two-sample test (MMD, the verdict), a domain classifier (which
    images look most unlike the reference) and, with --model, the new class prior (BBSE).

    Exit status 0: no drift; 1: drift; 2: bad input."""
    from click.core import ParameterSource

    from tltf.drift.detect import check_settings
    from tltf.errors import TltfError

    if model:
        explicit = [f"--{name}" for name in ("backbone", "weights")
                    if ctx.get_parameter_source(name) is not ParameterSource.DEFAULT]
        if explicit:
            raise TltfError(f"{explicit[0]}: not with --model (the features come from the model's own backbone)")
    check_settings(alpha, max_samples, permutations)  # before any data or model is read

    from tltf.drift.detect import detect_drift

    report = detect_drift(reference, data, model=model, backbone=backbone, weights=weights, image_size=image_size,
                          max_samples=max_samples, seed=seed, alpha=alpha, permutations=permutations,
                          batch_size=batch_size, data_dir=data_dir, cache=cache, out=out,
                          log=None if as_json else click.echo)
    click.echo(json.dumps(report.as_dict()) if as_json else report.format())
    ctx.exit(1 if report.drift else 0)
