"""Input-pipeline and training throughput, so later work can show the pipeline is never the bottleneck.

    python benchmarks/train_throughput.py [--backbone mobilenet_v2] [--image-size 160] [--images 1024]
                                          [--batch-size 32] [--json OUT]

1. Writes ``--images`` JPEG files (256x256, a class-folder layout) to a temp folder.
2. Pipeline only (no model): images/s from files to batches, first epoch (read + decode + resize) and a cached
   epoch (augmentation only).
3. Training: images/s of ``model.fit`` per stage of the gradual plan (head, top block, half, all), one epoch each
   after a warm-up epoch, with the same pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tltf.data import Augment, load_data, make_pipeline  # noqa: E402
from tltf.data.builtin import SHAPES, shapes  # noqa: E402
from tltf.models.classifier import build_classifier  # noqa: E402
from tltf.staging import StagedFineTuning, make_optimizer, prepare, preset  # noqa: E402
from tltf.staging.freezing import blocks_of  # noqa: E402


def write_folder(root: Path, n: int) -> None:
    x, y = shapes(n, size=256, seed=0)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / SHAPES[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.jpg").write_bytes(tf.io.encode_jpeg(image, quality=90).numpy())


def epoch_rate(ds) -> float:
    start, n = time.perf_counter(), 0
    for x, _ in ds:
        n += int(x.shape[0])
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=160)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json")
    args = parser.parse_args()
    size = (args.image_size, args.image_size)
    report = {"device": "GPU" if tf.config.list_physical_devices("GPU") else f"CPU x{os.cpu_count()}",
              "backbone": args.backbone, "image_size": args.image_size, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        write_folder(Path(tmp), args.images)
        data = load_data(tmp, val_split=0.0)
        ds = make_pipeline(data.train, size, args.batch_size, training=True, augment=Augment())
        report["pipeline_first_epoch_images_per_s"] = round(epoch_rate(ds), 1)
        report["pipeline_cached_epoch_images_per_s"] = round(epoch_rate(ds), 1)
        print(f"pipeline: first epoch {report['pipeline_first_epoch_images_per_s']} img/s (decode+resize), "
              f"cached {report['pipeline_cached_epoch_images_per_s']} img/s", flush=True)

        model = build_classifier(args.backbone, data.class_names, args.image_size, weights="none")
        n_blocks = len(blocks_of(model))
        plan = preset("gradual", 8, 1e-3, n_blocks)  # 2 epochs per stage: warm-up (trace) + measured
        model.compile(make_optimizer("adam", 1e-3), "sparse_categorical_crossentropy")
        prepare(model, plan)
        timings: list[float] = []

        class Timer(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                timings.append(time.perf_counter() - self.t)

        model.fit(ds, epochs=plan.epochs, callbacks=[StagedFineTuning(plan, verbose=0), Timer()], verbose=0)
        report["train"] = []
        for i, stage in enumerate(plan.stages):
            rate = len(data.train) / timings[2 * i + 1]
            report["train"].append({"stage": stage.name, "images_per_s": round(rate, 1)})
            print(f"train stage {stage.name:<6} {rate:8.1f} img/s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
