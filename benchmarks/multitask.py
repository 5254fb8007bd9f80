"""Multitask heads (issue 16): one model with a head per task against one model per task, on the same images.

- ``mnist``: MNIST 5k, digit (10 classes) + parity (even/odd); ``--train`` training images, 1,000 test images;
  ``cnn_small`` from scratch at 28 px, ``--epochs`` epochs, no augmentation.
- ``shapes``: coloured shapes, colour (3) + shape (3); 600 training images, 450 test; frozen MobileNetV2 features
  (torchvision ImageNet weights, 64 px, ``--stage feature``: the head on cached features), 20 epochs.

For each seed: ``tltf fit --tasks a,b`` once, and ``tltf fit`` on each label column alone; test accuracy per task,
training seconds, and the exported ONNX files' batch-1 latency (one two-output file against the two single-task
files run one after the other).

Usage: ``python benchmarks/multitask.py [--data mnist,shapes] [--seeds 3] [--json benchmarks/multitask.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _manifest(root: Path, images: np.ndarray, columns: dict, splits: list[str]) -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    lines = [",".join(["file", *names, "split"])]
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"{i}.png")
        lines.append(",".join([f"{i}.png", *(str(columns[n][i]) for n in names), splits[i]]))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def mnist_data(work: Path, seed: int, train: int) -> Path:
    from tltf.data import offline

    x, y = offline.mnist_5k()
    pick = np.random.default_rng(seed).permutation(len(y))[:train + 1000]
    x, y = x[pick], y[pick]
    return _manifest(work, np.repeat(x[..., None], 3, axis=-1),
                     {"digit": y, "parity": np.where(y % 2 == 0, "even", "odd")},
                     ["train"] * train + ["test"] * 1000)


def shapes_data(work: Path, seed: int) -> Path:
    from tltf.data.builtin import COLOURS, SHAPES, coloured_shapes

    combos = [(c, s) for c in COLOURS for s in SHAPES]
    x, y = coloured_shapes(600, combos, 64, seed=seed)
    xt, yt = coloured_shapes(450, combos, 64, seed=1000 + seed)
    labels = np.concatenate([y, yt])
    return _manifest(work, np.concatenate([x, xt]), {"colour": [combos[i][0] for i in labels],
                                                     "shape": [combos[i][1] for i in labels]},
                     ["train"] * len(y) + ["test"] * len(yt))


def latency_ms(paths: list[Path], size: int, repeats: int = 200) -> float:
    """Median batch-1 milliseconds to run every file in ``paths`` on one image."""
    from tltf.runtime.onnx_model import OnnxModel

    models = [OnnxModel(p) for p in paths]
    image = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    for m in models:
        m.run(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for m in models:
            m.run(image)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    from tltf.export.onnx import export_onnx
    from tltf.training import FitConfig, fit

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist,shapes")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--work", default="runs/multitask")
    parser.add_argument("--json", default="benchmarks/multitask.json")
    args = parser.parse_args()
    runs = []
    for data in args.data.split(","):
        for seed in range(args.seeds):
            work = Path(args.work) / data / f"seed{seed}"
            if data == "mnist":
                manifest, tasks = mnist_data(work / "images", seed, args.train), ["digit", "parity"]
                settings = dict(backbone="cnn_small", weights="none", image_size=28, epochs=args.epochs,
                                augment="none")
            else:
                from tltf.weights.pretrained import resolve

                manifest, tasks = shapes_data(work / "images", seed), ["colour", "shape"]
                settings = dict(weights=str(resolve("torchvision:mobilenet_v2")), image_size=64, stage="feature",
                                epochs=20)
            row = {"data": data, "seed": seed}
            arms = {"multitask": dict(data=str(manifest), tasks=",".join(tasks)),
                    **{f"{task}_alone": dict(data=f"{manifest}:{task}") for task in tasks}}
            onnx = {}
            for arm, options in arms.items():
                start = time.perf_counter()
                metrics = fit(FitConfig(**settings, **options, seed=seed, refit="off", out=str(work / arm),
                                        tensorboard=False), overwrite=True, verbose=0)
                row[f"{arm}_seconds"] = round(time.perf_counter() - start, 2)
                if arm == "multitask":
                    for task in tasks:
                        row[f"multitask_{task}"] = metrics["tasks"][task]["test_accuracy"]
                else:
                    row[arm] = metrics["test_accuracy"]
                onnx[arm] = work / f"{arm}.onnx"
                report = export_onnx(work / arm / "model.keras", onnx[arm])
                row[f"{arm}_parity_max_abs_diff"] = report["max_abs_diff"]
            size = settings["image_size"]
            row["multitask_ms"] = round(latency_ms([onnx["multitask"]], size), 3)
            row["separate_ms"] = round(latency_ms([onnx[f"{task}_alone"] for task in tasks], size), 3)
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary = []
    for data in dict.fromkeys(r["data"] for r in runs):
        rows = [r for r in runs if r["data"] == data]
        summary.append({"data": data, "n": len(rows), **{
            key: (float(max(r[key] for r in rows)) if key.endswith("max_abs_diff") else  # the worst seed
                  [round(float(np.mean([r[key] for r in rows])), 4), round(float(np.std([r[key] for r in rows])), 4)])
            for key in rows[0] if key not in ("data", "seed")}})
    Path(args.json).write_text(json.dumps({"settings": vars(args), "summary": summary, "runs": runs}, indent=2)
                               + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
