"""tltf's per-epoch overhead against plain Keras ``model.fit`` on identical work.

    python benchmarks/overhead_vs_keras.py [--modes scratch,head,finetune] [--epochs 4] [--rounds 3]
                                           [--images 600] [--image-size 96] [--batch-size 32] [--threads 0]
                                           [--json benchmarks/overhead_vs_keras.json]

1. Writes ``--images`` PNG files (128x128, three classes of drawn shapes, a class-folder layout) to a temp folder.
2. For each mode, alternately (tltf, keras, tltf, keras ... ``--rounds`` pairs, to spread the noise of a shared
   machine over both sides), runs ``--epochs`` epochs of

   - tltf: ``tltf.api.fit(FitConfig(data=FOLDER, backbone="mobilenet_v2", image_size=96, batch_size=32,
     augment="none", val_split=0.2, weights="none", refit="off", ...))``, everything else at tltf's defaults
     (backup for resume, ``history.csv``, TensorBoard, precise BatchNorm when BatchNorm trains);
   - keras: ``keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3),
     pooling="avg")`` behind the same ``[-1, 1]`` rescaling, with a ``Dropout(0.2)`` + ``Dense`` softmax head,
     Adam 1e-3, ``model.fit`` on a plain tf.data pipeline of the same files (decode, antialiased bilinear resize,
     cache, shuffle, batch, prefetch) validating on the same held-out images (tltf's stratified split, seed 0).

   Modes (the same trainable set on both sides):

   - ``scratch``: ``stage="scratch"``: every layer trains, BatchNorm in training mode (tltf adds precise BN);
   - ``head``: ``stage="feature", train_bn=False, feature_cache=False``: the backbone frozen (inference mode), the
     head trains on every image each epoch;
   - ``finetune``: ``stage="scratch", train_bn=False``: every layer trains, BatchNorm in inference mode (gamma and
     beta train; plain Keras calls the network with ``training=False`` from a one-line wrapper layer).

3. An epoch's seconds are wall time from one ``on_epoch_begin`` to the next (the last: to ``on_train_end``), seen
   by a callback that runs after all of tltf's own: training, validation and every callback's epoch work (precise
   BN, checkpoint, CSV, TensorBoard). The first epoch (tracing) is left out on both sides. Reported per mode: the
   median of the remaining epochs over all rounds for each side and their ratio tltf / keras; the same for the
   process's CPU seconds (all threads), which move less than wall time when other work shares the machine; the
   ratio of each side's fastest epoch (other work only ever adds time); tltf's own ``history.csv`` ``seconds``
   (``EpochTiming``: it ends before the checkpoint is written).

What tltf adds to an epoch here (2-core CPU, scratch: ~3-4 s of plain Keras work), profiled with pyinstrument:

- precise BatchNorm's statistics pass (``tltf.staging.batchnorm``): one compiled forward pass over 128 training
  images, 0.24 s (4.3 s when it ran eagerly over 16 batches). It is the price of what it fixes and was kept whole:
  statistics from fewer images validate worse (600 shapes, 4 epochs from scratch, val loss with 32 / 64 / 128 / 512
  images: 1.42 / 1.43 / 1.33 / 1.36 and 0.67 / 0.61 / 0.57 / 0.46 for two seeds), and a bigger batch or a fixed
  subset of images is no faster (0.237 s as 4x32, 0.238 s as 1x128, 0.257 s from the training pipeline);
- the per-epoch backup for resume (``tltf.training.callbacks.FiniteBackup``): every model and optimizer variable
  into one ``.npz``, ~60 ms (Keras' ``save_weights`` took 0.22-0.34 s, a third of a head-only epoch);
- for image folders, until their pipelines knew their length, Keras asking for a batch past the end of every epoch
  (0.15-0.3 s idle).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tltf.api import FitConfig, fit  # noqa: E402
from tltf.data.split import stratified_split  # noqa: E402
from tltf.reporting import read_history  # noqa: E402

CLASSES = ("circle", "square", "triangle")
MODES = {
    # name: (tltf FitConfig overrides, keras: which layers train, BatchNorm in training mode)
    "scratch": ({"stage": "scratch", "train_bn": True}, "all", True),
    "head": ({"stage": "feature", "train_bn": False, "feature_cache": False}, "head", False),
    "finetune": ({"stage": "scratch", "train_bn": False}, "all", False),
}


# --- data ------------------------------------------------------------------------------------------------------

def draw(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A ``size``-px RGB image: a noisy background and one filled shape of a random colour, place and scale."""
    image = rng.integers(0, 80, (size, size, 3)).astype(np.float32) + rng.integers(0, 120, 3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    r = rng.uniform(0.15, 0.35) * size
    cy, cx = rng.uniform(r, size - r, 2)
    if kind == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    elif kind == "square":
        mask = (np.abs(yy - cy) <= r * 0.8) & (np.abs(xx - cx) <= r * 0.8)
    else:
        mask = (yy >= cy - r) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - (cy - r)) / 2)
    image[mask] = rng.integers(100, 256, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_folder(root: Path, n: int, size: int = 128, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` PNG files in ``root/CLASS/`` (classes in turn); returns the paths and labels in tltf's folder order."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        kind = CLASSES[i % len(CLASSES)]
        folder = root / kind
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(tf.io.encode_png(draw(kind, size, rng)).numpy())
    files, labels = [], []
    for label, kind in enumerate(sorted(CLASSES)):  # tltf: class folders sorted by name, files sorted in each
        for f in sorted((root / kind).iterdir()):
            files.append(str(f))
            labels.append(label)
    return files, np.asarray(labels, np.int32)


def keras_pipeline(files, labels, size: int, batch_size: int, training: bool, seed: int = 0) -> tf.data.Dataset:
    """Plain tf.data: read, decode, resize (as tltf: antialiased bilinear), cache, shuffle, batch, prefetch."""
    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(tf.cast(image, tf.float32), (size, size), antialias=True)
        return tf.clip_by_value(image, 0.0, 255.0), label

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(files), labels))
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).cache()
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


# --- timing ----------------------------------------------------------------------------------------------------

class EpochWall(keras.callbacks.Callback):
    """Wall seconds of each epoch: from its ``on_epoch_begin`` to the next one's (the last: ``on_train_end``)."""

    def __init__(self):
        super().__init__()
        self.starts: list[tuple[float, float]] = []
        self.end = None

    def on_epoch_begin(self, epoch, logs=None):
        self.starts.append((time.perf_counter(), time.process_time()))

    def on_train_end(self, logs=None):
        self.end = (time.perf_counter(), time.process_time())

    @property
    def seconds(self) -> list[float]:
        marks = [*self.starts, self.end]
        return [b[0] - a[0] for a, b in zip(marks, marks[1:])]

    @property
    def cpu_seconds(self) -> list[float]:
        """CPU seconds of the process (all threads) per epoch: less sensitive to other work on the machine."""
        marks = [*self.starts, self.end]
        return [b[1] - a[1] for a, b in zip(marks, marks[1:])]


def run_tltf(mode: str, folder: Path, out: Path, args) -> dict:
    overrides = MODES[mode][0]
    config = FitConfig(data=str(folder), backbone="mobilenet_v2", weights="none", image_size=args.image_size,
                       batch_size=args.batch_size, augment="none", val_split=0.2, epochs=args.epochs, refit="off",
                       seed=0, out=str(out), **overrides)
    timer = EpochWall()
    start = time.perf_counter()
    metrics = fit(config, overwrite=True, verbose=0, callbacks=[timer])
    wall = time.perf_counter() - start
    history = read_history(out / "history.csv")
    return {"epoch_s": timer.seconds, "epoch_cpu_s": timer.cpu_seconds,
            "history_s": [float(row["seconds"]) for row in history], "run_s": wall,
            "val_accuracy": metrics.get("val_accuracy")}


class InferenceMode(keras.layers.Layer):
    """Calls ``net`` with ``training=False`` (Keras 3 passes the caller's flag into a nested Functional model)."""

    def __init__(self, net, **kwargs):
        super().__init__(**kwargs)
        self.net = net

    def call(self, x):
        return self.net(x, training=False)


def keras_model(mode: str, image_size: int, num_classes: int) -> keras.Model:
    _, trains, bn_training = MODES[mode]
    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(image_size, image_size, 3),
                                          pooling="avg")
    inputs = keras.Input((image_size, image_size, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    if trains == "head":
        base.trainable = False  # frozen BatchNorm runs in inference mode
        x = base(x)
    elif bn_training:
        x = base(x)
    else:
        x = InferenceMode(base)(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def run_keras(mode: str, files, labels, train_idx, val_idx, args) -> dict:
    keras.utils.set_random_seed(0)
    files = np.asarray(files)
    train = keras_pipeline(files[train_idx], labels[train_idx], args.image_size, args.batch_size, True)
    val = keras_pipeline(files[val_idx], labels[val_idx], args.image_size, args.batch_size, False)
    model = keras_model(mode, args.image_size, len(CLASSES))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False)  # tltf's CPU default (no XLA); Keras' own "auto" is the same on a CPU
    timer = EpochWall()
    start = time.perf_counter()
    history = model.fit(train, validation_data=val, epochs=args.epochs, callbacks=[timer], verbose=0,
                        shuffle=False)
    wall = time.perf_counter() - start
    return {"epoch_s": timer.seconds, "epoch_cpu_s": timer.cpu_seconds, "run_s": wall,
            "val_accuracy": history.history["val_accuracy"][-1]}


def fresh() -> None:
    keras.backend.clear_session()
    gc.collect()


def show(mode: str, r: int, side: str, run: dict) -> None:
    print(f"  {mode:<8} round {r + 1} {side:<5} s/epoch " + " ".join(f"{s:6.2f}" for s in run["epoch_s"])
          + "   cpu s/epoch " + " ".join(f"{s:6.2f}" for s in run["epoch_cpu_s"]), flush=True)


def summarise(runs: list[dict], key: str = "epoch_s", how=statistics.median) -> float | None:
    later = [s for run in runs for s in run[key][1:]]  # the first epoch traces: left out
    return how(later) if later else None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="scratch,head,finetune")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra- and inter-op threads (0: TensorFlow's default, all cores); 1 gives "
                             "steadier figures on a machine shared with other work")
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args(argv)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for mode in modes:
        if mode not in MODES:
            parser.error(f"--modes: unknown mode {mode!r} (choose from {', '.join(MODES)})")
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is left out)")
    report = {"device": "GPU" if tf.config.list_physical_devices("GPU") else f"CPU x{os.cpu_count()}",
              "tensorflow": tf.__version__, "keras": keras.__version__, "backbone": "mobilenet_v2",
              "image_size": args.image_size, "batch_size": args.batch_size, "images": args.images,
              "epochs": args.epochs, "rounds": args.rounds, "threads": args.threads or "default", "modes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = root / "data"
        files, labels = write_folder(folder, args.images)
        train_idx, val_idx = stratified_split(labels, 0.2, seed=0)  # what tltf's load_data holds out
        for mode in modes:
            runs = {"tltf": [], "keras": []}
            for r in range(args.rounds):
                fresh()
                runs["tltf"].append(run_tltf(mode, folder, root / f"run_{mode}_{r}", args))
                show(mode, r, "tltf", runs["tltf"][-1])
                fresh()
                runs["keras"].append(run_keras(mode, files, labels, train_idx, val_idx, args))
                show(mode, r, "keras", runs["keras"][-1])
            t, k = summarise(runs["tltf"]), summarise(runs["keras"])
            tc, kc = summarise(runs["tltf"], "epoch_cpu_s"), summarise(runs["keras"], "epoch_cpu_s")
            report["modes"][mode] = {
                "tltf_epoch_s": round(t, 3), "keras_epoch_s": round(k, 3), "ratio": round(t / k, 3),
                "tltf_epoch_cpu_s": round(tc, 3), "keras_epoch_cpu_s": round(kc, 3), "cpu_ratio": round(tc / kc, 3),
                "tltf_history_epoch_s": round(summarise(runs["tltf"], "history_s"), 3),
                # the fastest epoch of each side: other work on the machine only ever adds time
                "tltf_best_epoch_s": round(summarise(runs["tltf"], how=min), 3),
                "keras_best_epoch_s": round(summarise(runs["keras"], how=min), 3),
                "best_ratio": round(summarise(runs["tltf"], how=min) / summarise(runs["keras"], how=min), 3),
                "runs": {side: [{key: ([round(s, 3) for s in value] if isinstance(value, list) else
                                       (round(value, 3) if isinstance(value, float) else value))
                                 for key, value in run.items()} for run in side_runs]
                         for side, side_runs in runs.items()}}
    print(f"\nmedian of epochs 2..{args.epochs} over {args.rounds} round(s); wall seconds, and the process's CPU "
          "seconds (all threads: less sensitive to other work on a shared machine)")
    print(f"{'mode':<10}{'tltf s/epoch':>14}{'keras s/epoch':>15}{'tltf/keras':>12}{'tltf cpu s':>12}"
          f"{'keras cpu s':>13}{'cpu ratio':>11}{'best-epoch ratio':>18}")
    for mode, row in report["modes"].items():
        print(f"{mode:<10}{row['tltf_epoch_s']:>14.2f}{row['keras_epoch_s']:>15.2f}{row['ratio']:>11.2f}x"
              f"{row['tltf_epoch_cpu_s']:>12.2f}{row['keras_epoch_cpu_s']:>13.2f}{row['cpu_ratio']:>10.2f}x"
              f"{row['best_ratio']:>17.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
