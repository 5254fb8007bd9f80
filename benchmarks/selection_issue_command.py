"""Issue 31's own command, through the CLI, on a synthetic -> real pair: 3,000 digits rendered from this machine's
fonts (:mod:`tltf.data.rendered_digits`) as the labelled source folder, 2,000 MNIST digits as the target folder
(labels read only for the report), then

    tltf compare --data SRC --target-data TGT --target-labels-for-eval --backbone cnn_small --weights none
                 --adapt none,dann,mmd,coral --epochs 10 --image-size 32 --seeds 2

``compare.json`` is copied to ``benchmarks/selection_issue_command.json``. The same data as ``fonts->mnist`` in
:mod:`selection_shifts` (which trains through the Python API and replays rules offline).

    python benchmarks/selection_issue_command.py [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def write_folders(work: Path) -> tuple[Path, Path]:
    from PIL import Image

    sys.path.insert(0, str(HERE))
    from selection_shifts import pair_data

    (xs, ys), (xt, yt) = pair_data("fonts->mnist")
    for name, x, y in (("source", xs, ys), ("target", xt, yt)):
        for i, (img, label) in enumerate(zip(x, y)):
            folder = work / name / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.asarray(img).round().clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.png")
    return work / "source", work / "target"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tltf-selection-issue"))
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    source, target = write_folders(args.work)
    subprocess.run(["tltf", "compare", "--data", str(source), "--target-data", str(target),
                    "--target-labels-for-eval", "--backbone", "cnn_small", "--weights", "none",
                    "--adapt", "none,dann,mmd,coral", "--epochs", "10", "--image-size", "32", "--seeds", "2",
                    "--out", str(args.work / "compare")], check=True)
    shutil.copyfile(args.work / "compare" / "compare.json", HERE / "selection_issue_command.json")


if __name__ == "__main__":
    main()
