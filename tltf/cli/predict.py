"""``tltf predict MODEL IMAGE… [--top 5] [--json]``: top classes for image files, with a .keras or .onnx model;
``--engine ray --out preds.parquet``: batch scoring of a folder (or a URI) on Ray Data."""

import click


@click.command("predict")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, type=click.Path())
@click.option("--top", default=5, show_default=True, type=int, help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list on stdout (one object per image).")
@click.option("--data", "data", default=None,
              help="A folder of images (as IMAGE folders are read), or with --engine ray a URI Ray reads (s3://...).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process; ray: Ray Data reads and decodes, an actor pool of onnxruntime sessions "
                   "scores (pip install 'tltf[ray]'; .onnx models; needs --out).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="--engine ray: the Parquet file of results (file, top_index, top_label, top_score), written "
                   "whole or not at all.")
@click.option("--ray-address", default=None, help="--engine ray: an existing Ray cluster [default: a local one].")
@click.option("--ray-cpus", default=2, show_default=True, type=int,
              help="--engine ray: CPUs of the local cluster (one reads and decodes, the others score).")
def command(model, images, top, as_json, data, engine, out, ray_address, ray_cpus):
    """Top classes for IMAGE files with MODEL (.keras or .onnx). A folder stands for the images it holds; a
    folder of class folders (a training set, also with train/ val/ test/) for all their images, read as --data
    reads it.

    Images are decoded and resized exactly as in training; the model normalises them itself.
    """
    import json
    from pathlib import Path

    from tltf.predict import predict_files

    from tltf.errors import TltfError

    if not images and not data:
        raise TltfError("IMAGE: give image files or folders, or --data FOLDER")
    if engine == "ray" or out:
        return _with_ray(model, images, data, top, engine, out, ray_address, ray_cpus)
    files = []
    for image in [*images, *([data] if data else [])]:
        path = Path(image)
        files += folder_images(path) if path.is_dir() else [image]
    results = predict_files(model, files, top=top)
    if as_json:
        click.echo(json.dumps(results))
        return
    from rich.console import Console
    from rich.table import Table

    multitask = any("tasks" in r for r in results)
    table = Table("file", *(("task",) if multitask else ()), "rank", "class", "score", box=None)
    for r in results:
        lists = r["tasks"].items() if multitask else [(None, r["top"])]
        for n, (task, best) in enumerate(lists):
            for rank, t in enumerate(best, 1):
                label = t["label"] if t["label"] is not None else f"#{t['index']}"
                first = rank == 1
                table.add_row(r["file"] if first and n == 0 else "", *((task if first else "",) if multitask else ()),
                              str(rank), label, f"{t['score']:.3f}")
    Console().print(table)


def folder_images(path) -> list[str]:
    """The images directly in ``path``; where there are none, those of its class folders exactly as ``--data``
    reads them (a train/ val/ test/ layout split by split; unreadable or oversized images skipped with a
    warning). No TensorFlow: :mod:`tltf.data.folders`."""
    from pathlib import Path

    from tltf.data.folders import labelled_files
    from tltf.runtime.images import is_image_file

    path = Path(path)
    flat = sorted(str(p) for p in path.iterdir() if is_image_file(p))
    if flat:
        return flat
    return labelled_files(path, option="predict")[1]


def _with_ray(model, images, data, top, engine, out, address, cpus) -> None:
    """``--engine ray``: :func:`tltf.deploy.ray_scoring.score` into ``--out``, and a one-line summary."""
    import importlib.util
    from pathlib import Path

    from tltf.errors import TltfError

    if engine != "ray":
        raise TltfError(f"--out {out}: results are written to a file with --engine ray only")
    if not out:
        raise TltfError("--engine ray: give --out FILE.parquet for the results")
    if importlib.util.find_spec("ray") is None:
        raise TltfError("--engine ray: Ray is not installed (pip install 'tltf[ray]')")
    sources = data if data and "://" in data else []
    if not sources:
        for image in [*images, *([data] if data else [])]:
            path = Path(image)
            if not path.exists():
                raise TltfError(f"{image}: no such file or folder")
            sources += folder_images(path) if path.is_dir() else [image]
    from tltf.deploy.ray_scoring import score

    stats = score(model, sources, out, top=top, address=address, num_cpus=cpus)
    click.echo(f"{out}: {stats['images']} images in {stats['seconds']:.1f} s ({stats['images_per_s']:.1f} "
               f"images/s; Ray start-up {stats['startup_s']:.1f} s, {stats['actors']} onnxruntime actor(s) on "
               f"{stats['cpus']} CPUs)")
