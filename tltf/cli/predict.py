"""``tltf predict MODEL IMAGE… [--top 5] [--json]``: top classes for image files, with a .keras or .onnx model."""

import click


@click.command("predict")
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top", default=5, show_default=True, type=int, help="How many classes to show per image.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON list on stdout (one object per image).")
def command(model, images, top, as_json):
    """Top classes for IMAGE files with MODEL (.keras or .onnx). A folder stands for the images it holds; a
    folder of class folders (a training set, also with train/ val/ test/) for all their images, read as --data
    reads it.

    Images are decoded and resized exactly as in training; the model normalises them itself.
    """
    import json
    from pathlib import Path

    from tltf.predict import predict_files

    files = []
    for image in images:
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
