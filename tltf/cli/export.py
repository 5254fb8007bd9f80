"""``tltf export MODEL.keras --onnx [--out exported/NAME.onnx] [--opset N] [--features] [--fp16 | --int8
--calibration-data DATA] [--max-diff X | --min-agreement Y] [--target ort-mobile [--platform arm|amd64]
[--type-reduction]] [--target web] [--slim auto|on|off]``: a thin layer over :func:`tltf.export.onnx.export_onnx`,
:func:`tltf.export.ort_mobile.export_ort` and :func:`tltf.export.web.build_web_app`."""

import click

from tltf.export import precision as precisions


TARGETS = ["ort-mobile", "web"]


def ort_platforms() -> list[str]:
    from tltf.export.ort_mobile import PLATFORMS

    return list(PLATFORMS)


def _precision_flags(f):
    """One ``--NAME`` flag per non-default row of :data:`tltf.export.precision.PRECISIONS`, in table order."""
    for row in reversed(precisions.flagged()):
        help_ = row.description + ("; needs --calibration-data." if row.needs_calibration else ".")
        f = click.option(row.flag, row.name, is_flag=True, help=help_)(f)
    return f


def _gate_help(gate: precisions.Gate) -> str:
    """``--fp16/--int8 parity gate: the smallest top-1 agreement with Keras accepted [default: 0.99 fp16, ...].``"""
    rows = precisions.gated_by(gate)
    labels = "/".join(row.label for row in rows)
    if len(rows) == 1:
        defaults = precisions.format_threshold(rows[0].threshold)
    else:
        defaults = ", ".join(f"{precisions.format_threshold(row.threshold)} {row.name}" for row in rows)
    return f"{labels} parity gate: {gate.help} [default: {defaults}]."


def _calibrated_flags() -> str:
    return "/".join(row.label for row in precisions.PRECISIONS if row.needs_calibration)


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--onnx", "to_onnx", is_flag=True, help="Export to ONNX (the only format for now).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Output file [default: exported/<model stem, or run folder name>.onnx].")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (13-18).")
@click.option("--features", is_flag=True,
              help="Add a second output, \"features\" (batch, D): the pooled penultimate-layer features, for tltf "
              "drift --model FILE.onnx. Off by default though it costs nothing measurable (cnn_small and mobilenet_v2: the "
              "same nodes, as both outputs share one backbone pass; the file 0.1% smaller, for shorter tensor names; "
              "latency within 2%, run to run), because it changes the file's contract: tltf serve answers a v2 "
              "request that names no output with every output -- for mobilenet_v2 26 KB of JSON features per image "
              "beside 63 bytes of probabilities.")
@_precision_flags
@click.option("--calibration-data", help=f"Real images to calibrate {_calibrated_flags()} and to check parity on: an "
              "image folder (class sub-folders or flat), builtin:NAME, tfds:NAME[:SPLIT] or a .npz.")
@click.option("--max-calibration", type=int, default=256, show_default=True, help="At most this many images.")
@click.option(precisions.MAX_DIFF.option, type=float, help=_gate_help(precisions.MAX_DIFF))
@click.option(precisions.MIN_AGREEMENT.option, type=float, help=_gate_help(precisions.MIN_AGREEMENT))
@click.option("--target", "targets", type=click.Choice(TARGETS), multiple=True,
              help="Also build for an edge runtime (repeatable): ort-mobile = NAME.ort (onnxruntime's converter, "
              "measured options) + NAME.required_operators.config for a minimal onnxruntime build, checked against "
              "the .onnx; web = the folder NAME.web, a static page that classifies dropped images with "
              "onnxruntime-web.")
@click.option("--platform", type=click.Choice(ort_platforms()), default="arm", show_default=True,
              help="--target ort-mobile: the CPU the .ort file is for (amd64: x86 layout kernels, as fast as the "
              ".onnx there; arm: none of them, runs 2-3x slower on x86).")
@click.option("--type-reduction", is_flag=True,
              help="--target ort-mobile: write NAME.required_operators_and_types.config instead, with each "
              "operator's input types, for a minimal build that keeps only those types' kernels "
              "(--enable_reduced_operator_type_support).")
@click.option("--slim", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Simplify the graph with onnxslim (auto: keep it where its outputs match the original's; on: "
              "refuse the export otherwise).")
@click.option("--openvino-precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="The precision OpenVINO computes in when the export checks the file on it (bf16: faster on "
              "CPUs that have it, flips near-tied answers).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table.")
def command(model, to_onnx, out, opset, features, calibration_data, max_calibration, max_diff, min_agreement,
            targets, platform, type_reduction, slim, openvino_precision, as_json, **flags):
    """Export MODEL (a .keras file) to ONNX; the file is kept only if onnxruntime matches Keras (parity gate).

    The graph takes raw RGB pixels, float32 0..255, NHWC, input "pixels" (dynamic batch) -- preprocessing is
    inside -- and returns "probabilities" (batch, num_classes); with --features also "features" (batch, D).
    Class names, input size and the rest are in the ONNX metadata. The report is printed and saved as OUT.json.
    """
    import json

    from tltf.errors import TltfError
    from tltf.export.onnx import default_output, export_onnx

    if not to_onnx:
        raise TltfError("--onnx: choose an export format (only --onnx exists)")
    chosen = [row for row in precisions.flagged() if flags[row.name]]
    if len(chosen) > 1:
        raise TltfError(f"{' and '.join(row.flag for row in chosen)}: choose one")
    row = chosen[0] if chosen else precisions.get(precisions.DEFAULT)
    if row.needs_calibration and not calibration_data:
        raise TltfError(precisions.needs_calibration_message(row))
    if max_calibration < 1:
        raise TltfError(f"--max-calibration {max_calibration}: must be at least 1")
    if type_reduction and "ort-mobile" not in targets:
        raise TltfError("--type-reduction is for the ORT-format file: add --target ort-mobile")
    precision = row.name
    thresholds = {precisions.MAX_DIFF: max_diff, precisions.MIN_AGREEMENT: min_agreement}
    for gate in precisions.gates():
        if thresholds[gate] is not None and gate != row.gate:
            gated = "/".join(other.label for other in precisions.gated_by(gate))
            raise TltfError(f"{gate.option} gates {gated} exports; for {row.label} use {row.gate.option}")
    out = out or str(default_output(model))
    say = (lambda message: None) if as_json else (lambda message: click.echo(f"· {message}", err=True))
    report = export_onnx(model, out, opset=opset, precision=precision, calibration_data=calibration_data,
                         max_calibration=max_calibration, progress=say,
                         threshold=thresholds[row.gate], features=features, slim=slim,
                         openvino_precision=openvino_precision)
    built = _build_targets(out, targets, platform, say, type_reduction)
    if as_json:
        click.echo(json.dumps(report | ({"targets": built} if built else {}), indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['onnx']} ({precision}, opset {report['opset']})", box=None, show_header=False)
    gate = row.gate.describe(report["threshold"])
    rows = [
        ("parity images", f"{report['parity_images']} {report['parity_source']}"),
        ("max |onnx - keras|", f"{report['max_abs_diff']:.3g} ({report['relative_diff']:.2g} of output range)"),
        ("top-1 agreement", f"{100 * report['top1_agreement']:.1f}%"),
        ("gate", f"passed ({gate})"),
        ("output spread (std)", f"{report['output_std']:.3g}"),
        *_features_row(report.get("features")),
        ("nodes", f"{report['nodes']} ({report['transpose_nodes']} Transpose)"),
        ("size", f"{report['bytes'] / 1e6:.2f} MB"),
        ("onnxruntime", f"{report['timings_s']['onnxruntime_ms_per_image']:.2f} ms/image (CPU, batched)"),
        *_speed_row(report.get("speed_vs_fp32")),
        ("report", f"{report['onnx']}.json"),
    ]
    for key, value in rows + _slim_rows(report.get("slim")) + _runtime_rows(report.get("runtimes")) + \
            _target_rows(built):
        table.add_row(key, value)
    Console().print(table)
    for name, check in (report.get("runtimes") or {}).items():
        if check.get("refused"):
            click.echo(f"warning: {check['refused']}", err=True)
    if report["output_std"] < 1e-4:
        click.echo("warning: the model's outputs barely change across the parity images; the check says little",
                   err=True)


def _features_row(features: dict | None) -> list[tuple[str, str]]:
    """The features output and how far it is from Keras' feature extractor, as a table row (none without it)."""
    if not features:
        return []
    return [("features output", f"{features['name']} (batch, {features['shape'][1]}): max |onnx - keras| "
                                f"{features['max_abs_diff']:.3g} ({features['relative_diff']:.2g} of its range), "
                                f"cosine >= {features['min_cosine']:.6f}")]


def _speed_row(speed: dict | None) -> list[tuple[str, str]]:
    """The int8 file's batch-1 speed against fp32 on this CPU, as a table row (none if it was not measured)."""
    if not speed:
        return []
    times = f"{speed['ms']:.2f} vs {speed['fp32_ms']:.2f} ms at batch 1 on this CPU"
    if speed["speedup"] >= 1:
        return [("vs fp32", f"{speed['speedup']:.2f}x faster ({times})")]
    return [("vs fp32", f"{1 / speed['speedup']:.2f}x slower ({times}): smaller, not faster here")]


def _build_targets(onnx_path: str, targets, platform: str, say, type_reduction: bool = False) -> dict:
    """Build each ``--target`` from the exported ``onnx_path``; their reports by target name."""
    from pathlib import Path

    built = {}
    for target in dict.fromkeys(targets):  # each once, in the order given
        if target == "ort-mobile":
            from tltf.export.ort_mobile import export_ort

            built[target] = export_ort(onnx_path, platform=platform, progress=say, type_reduction=type_reduction)
        else:
            from tltf.export.web import build_web_app

            say(f"building the web page {Path(onnx_path).with_suffix('.web')}")
            built[target] = build_web_app(Path(onnx_path), Path(onnx_path).with_suffix(".web"))
    return built


def _slim_rows(slim: dict | None) -> list[tuple[str, str]]:
    """What onnxslim removed and the onnxruntime time before and after, as a table row (none if not run)."""
    if not slim:
        return []
    if "error" in slim:
        return [("onnxslim", f"not used ({slim['error']})")]
    verdict = "kept" if slim["kept"] else "not kept"
    removed = ", ".join(f"{n} {op}" for op, n in slim["removed"].items()) or "nothing"
    return [("onnxslim", f"{verdict}: nodes {slim['nodes_before']} -> {slim['nodes_after']} (removed {removed}); "
                         f"{slim['ms_before']:.2f} -> {slim['ms_after']:.2f} ms at batch 1")]


def _runtime_rows(runtimes: dict | None) -> list[tuple[str, str]]:
    """Each checked runtime's agreement with onnxruntime, as table rows."""
    rows = []
    for name, check in (runtimes or {}).items():
        if not check.get("loads"):
            rows.append((name, "REFUSED: does not load the file"))
            continue
        verdict = "agrees" if check["ok"] else "REFUSED"
        rows.append((name, f"{verdict}: top-1 {100 * check['top1_agreement']:.1f}%, max |diff| "
                           f"{check['max_abs_diff']:.2g} vs onnxruntime ({check['version']})"))
    return rows


def _target_rows(built: dict) -> list[tuple[str, str]]:
    rows = []
    if "ort-mobile" in built:
        r = built["ort-mobile"]
        ops = sum(len(v) for v in r["operators"].values())
        rows.append(("ort-mobile", f"{r['ort']} ({r['platform']}, {r['bytes'] / 1e6:.2f} MB; max |diff| vs .onnx "
                                   f"{r['max_abs_diff']:.2g}); {r['required_operators']} ({ops} operators)"))
    if "web" in built:
        r = built["web"]
        rows.append(("web", str(r.get("folder") or r.get("out_dir") or r.get("path") or "built")))
    return rows
