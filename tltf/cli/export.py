"""``tltf export MODEL.keras --onnx [--out exported/NAME.onnx] [--opset N] [--fp16 | --int8
--calibration-data DATA] [--max-diff X | --min-agreement Y]``: a thin layer over :func:`tltf.export.onnx.export_onnx`."""

import click


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--onnx", "to_onnx", is_flag=True, help="Export to ONNX (the only format for now).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Output file [default: exported/<model stem, or run folder name>.onnx].")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (13-18).")
@click.option("--fp16", is_flag=True, help="Float16 weights and compute (for GPUs); float32 input and output.")
@click.option("--int8", is_flag=True, help="Static int8 quantization (QDQ, per-channel); needs --calibration-data.")
@click.option("--calibration-data", help="Real images to calibrate --int8 and to check parity on: an image folder "
              "(class sub-folders or flat), builtin:NAME, tfds:NAME[:SPLIT] or a .npz.")
@click.option("--max-calibration", type=int, default=256, show_default=True, help="At most this many images.")
@click.option("--max-diff", type=float, help="fp32 parity gate: the largest |onnxruntime - Keras| accepted, as a "
              "fraction of the output range [default: 1e-4].")
@click.option("--min-agreement", type=float, help="--fp16/--int8 parity gate: the smallest top-1 agreement with "
              "Keras accepted [default: 0.99 fp16, 0.97 int8].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
def command(model, to_onnx, out, opset, fp16, int8, calibration_data, max_calibration, max_diff, min_agreement,
            as_json):
    """Export MODEL (a .keras file) to ONNX; the file is kept only if onnxruntime matches Keras (parity gate).

    The graph takes raw RGB pixels, float32 0..255, NHWC, input "pixels" (dynamic batch) -- preprocessing is
    inside -- and returns "probabilities" (batch, num_classes). Class names, input size and the rest are in the
    ONNX metadata. The report is printed and saved as OUT.json.
    """
    import json

    from tltf.errors import TltfError
    from tltf.export.onnx import default_output, export_onnx

    if not to_onnx:
        raise TltfError("--onnx: choose an export format (only --onnx exists)")
    if fp16 and int8:
        raise TltfError("--fp16 and --int8: choose one")
    if int8 and not calibration_data:
        raise TltfError("--int8 needs --calibration-data DATA (an image folder, builtin:NAME, tfds:NAME or .npz)")
    if max_calibration < 1:
        raise TltfError(f"--max-calibration {max_calibration}: must be at least 1")
    precision = "fp16" if fp16 else "int8" if int8 else "fp32"
    if max_diff is not None and precision != "fp32":
        raise TltfError(f"--max-diff gates fp32 exports; for --{precision} use --min-agreement")
    if min_agreement is not None and precision == "fp32":
        raise TltfError("--min-agreement gates --fp16/--int8 exports; for fp32 use --max-diff")
    out = out or str(default_output(model))
    say = (lambda message: None) if as_json else (lambda message: click.echo(f"· {message}", err=True))
    report = export_onnx(model, out, opset=opset, precision=precision, calibration_data=calibration_data,
                         max_calibration=max_calibration, progress=say,
                         threshold=max_diff if precision == "fp32" else min_agreement)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['onnx']} ({precision}, opset {report['opset']})", box=None, show_header=False)
    fp32 = precision == "fp32"
    gate = (f"<= {report['threshold']:g} of the output range" if fp32 else
            f">= {100 * report['threshold']:.0f}% top-1 agreement")
    rows = [
        ("parity images", f"{report['parity_images']} {report['parity_source']}"),
        ("max |onnx - keras|", f"{report['max_abs_diff']:.3g} ({report['relative_diff']:.2g} of output range)"),
        ("top-1 agreement", f"{100 * report['top1_agreement']:.1f}%"),
        ("gate", f"passed ({gate})"),
        ("output spread (std)", f"{report['output_std']:.3g}"),
        ("nodes", f"{report['nodes']} ({report['transpose_nodes']} Transpose)"),
        ("size", f"{report['bytes'] / 1e6:.2f} MB"),
        ("onnxruntime", f"{report['timings_s']['onnxruntime_ms_per_image']:.2f} ms/image (CPU, batched)"),
        *_speed_row(report.get("speed_vs_fp32")),
        ("report", f"{report['onnx']}.json"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
    if report["output_std"] < 1e-4:
        click.echo("warning: the model's outputs barely change across the parity images; the check says little",
                   err=True)


def _speed_row(speed: dict | None) -> list[tuple[str, str]]:
    """The int8 file's batch-1 speed against fp32 on this CPU, as a table row (none if it was not measured)."""
    if not speed:
        return []
    times = f"{speed['ms']:.2f} vs {speed['fp32_ms']:.2f} ms at batch 1 on this CPU"
    if speed["speedup"] >= 1:
        return [("vs fp32", f"{speed['speedup']:.2f}x faster ({times})")]
    return [("vs fp32", f"{1 / speed['speedup']:.2f}x slower ({times}): smaller, not faster here")]
