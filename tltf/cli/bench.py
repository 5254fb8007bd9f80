"""``tltf bench MODEL.onnx [MORE.onnx ...] [--keras RUN_DIR/model.keras] [--batch-sizes 1,8,32] [--provider cpu|cuda|tensorrt]
[--runtime onnxruntime,openvino,opencv] [--json OUT]``."""

import click


def speed_words(ratio: float) -> str:
    """``ratio`` (Keras time / this runtime's time) in words: ``"2.50x faster"``, or below 1x ``"1.25x slower"``."""
    return f"{ratio:.2f}x faster" if ratio >= 1.0 else f"{1.0 / ratio:.2f}x slower"


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--keras", "keras_model", type=click.Path(dir_okay=False),
              help="The Keras original, timed side by side (tf.function, XLA when it is faster).")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu", show_default=True,
              help="onnxruntime execution provider (cuda/tensorrt need onnxruntime-gpu).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False),
              help="PNG plot [default: the --json path with .png, else MODEL.bench.png of the first MODEL; "
                   "skipped, with a note, where matplotlib is not installed].")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed passes per batch size.")
@click.option("--iterations", type=int, default=None, help="Timed passes per batch size [default: 10 or more, "
              "until 3 s have passed, at most 300].")
@click.option("--seconds", type=float, default=3.0, show_default=True, help="Minimum timed seconds per batch size.")
@click.option("--threads", type=int, help="onnxruntime CPU threads [default: the cores this process may use].")
@click.option("--xla", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Keras: XLA-compile (auto: measure both, keep the faster).")
@click.option("--runtime", "runtimes", help="Time the file on these CPU runtimes side by side, comma-separated: "
              "onnxruntime, openvino, opencv (pip install 'tltf[edge]'). Each is first checked against onnxruntime "
              "on 16 images; one that answers differently is refused (one line) and not timed.")
@click.option("--openvino-precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
              help="--runtime openvino: the precision it computes in (bf16: faster where the CPU has it, flips "
              "near-tied answers).")
def command(models, keras_model, batch_sizes, provider, json_out, plot_out, warmup, iterations, seconds, threads,
            xla, runtimes, openvino_precision):
    """Latency (p50/p90/p99) and throughput of MODELS (.onnx) in onnxruntime, and of their Keras original.

    Give several files (say the fp32 and int8 exports) to time them side by side and see which is faster here."""
    from pathlib import Path

    from rich.console import Console

    from tltf.bench.report import table, write
    from tltf.bench.runner import Timing, fastest, parse_batch_sizes, run_bench
    from tltf.errors import TltfError

    for model in models:
        if not Path(model).is_file():
            raise TltfError(f"{model}: no such model file")
        if Path(model).suffix.lower() != ".onnx":
            raise TltfError(f"{model}: expected an .onnx file (export one with `tltf export MODEL.keras --onnx`)")
    if len({Path(m).name for m in models}) < len(models):
        raise TltfError(f"{', '.join(models)}: give files with different names (results are labelled by name)")
    if warmup < 0 or (iterations is not None and iterations < 1) or seconds < 0:
        raise TltfError("--warmup, --iterations and --seconds must be positive")
    import importlib.util

    can_plot = importlib.util.find_spec("matplotlib") is not None  # not in the runtime-only install
    if plot_out and not can_plot:
        raise TltfError(f"--plot {plot_out}: the plot needs matplotlib, which is not installed here "
                        "(pip install matplotlib)")
    sizes = parse_batch_sizes(batch_sizes)
    timing = Timing(warmup=warmup, min_iters=iterations or 10, max_iters=iterations or 300,
                    min_time_s=0.0 if iterations else seconds)
    if runtimes is not None:
        _bench_runtimes(models, runtimes, keras_model, provider, sizes, timing, threads, openvino_precision,
                        json_out, plot_out if can_plot else None, can_plot)
        return
    bench = run_bench(list(models), keras_model=keras_model, batch_sizes=sizes, provider=provider, timing=timing,
                      xla={"on": True, "off": False}.get(xla, "auto"), threads=threads, progress=True)
    console = Console()
    console.print(table(bench))
    png = plot_out or (str(Path(json_out).with_suffix(".png")) if json_out else str(Path(models[0]).with_suffix(
        ".bench.png")))
    png = png if can_plot else None
    write(bench, json_out, png)
    for s in bench["speedups"]:
        who = s["model"] if len(models) > 1 else "onnxruntime"
        console.print(f"batch {s['batch_size']}: {who} is {speed_words(s['p50_ratio'])} than Keras (p50)")
    if len(models) > 1:
        for f in fastest(bench["results"]):
            others = ", ".join(f"{name} {ms:.2f} ms" for name, ms in f["others"].items())
            console.print(f"batch {f['batch_size']}: fastest here is {f['model']} ({f['p50_ms']:.2f} ms p50; "
                          f"{others})")
    plotted = f"plot: {png}" if png else "plot: skipped (matplotlib is not installed: pip install matplotlib)"
    console.print(plotted + (f", json: {json_out}" if json_out else ""))


def _bench_runtimes(models, runtimes, keras_model, provider, sizes, timing, threads, openvino_precision, json_out,
                    plot_out, can_plot):
    """``--runtime``: each file checked then timed on each runtime (:func:`tltf.bench.runtimes.run_runtimes`)."""
    from pathlib import Path

    from rich.console import Console

    from tltf.bench.report import table, write
    from tltf.bench.runtimes import run_runtimes
    from tltf.errors import TltfError
    from tltf.export.portability import parse_runtimes

    names = parse_runtimes(runtimes)
    if keras_model:
        raise TltfError("--runtime and --keras: time the runtimes or Keras against onnxruntime, not both")
    if provider != "cpu":
        raise TltfError(f"--runtime with --provider {provider}: the runtimes are compared on the CPU")
    bench = run_runtimes(list(models), names, batch_sizes=sizes, timing=timing, threads=threads,
                         openvino_precision=openvino_precision)
    console = Console()
    console.print(table(bench))
    for model, rows in bench["checks"].items():
        for name, check in rows.items():
            if check["ok"]:
                console.print(f"{model}: {name} {check['version']} agrees with onnxruntime: top-1 "
                              f"{100 * check['top1_agreement']:.1f}%, max |diff| {check['max_abs_diff']:.2g} "
                              f"({check['images']} images)")
    for line in bench["refused"]:
        click.echo(f"warning: {line}", err=True)
    png = plot_out or (str(Path(json_out).with_suffix(".png")) if json_out and can_plot else None)
    write(bench, json_out, png)
    if json_out or png:
        console.print(", ".join(x for x in (f"plot: {png}" if png else "", f"json: {json_out}" if json_out else "")
                                if x))
