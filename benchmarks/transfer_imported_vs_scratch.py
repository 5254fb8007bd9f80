"""Does transfer from the imported torchvision ImageNet weights work? Imported backbone vs random init, same budget.

Small real datasets from the package registry (``tltf.data.offline``):

- ``lfw``: the 200 LFW 25x25 grey images, faces vs non-faces; a stratified half (100) trains, the other half tests.
- ``mnist``: 10 MNIST digits per class train (100 images); 100 other digits per class test (1,000 images).

Images are upsampled bilinearly to ``--image-size`` (96) RGB. Each run builds
``build_classifier("mobilenet_v2", classes, size, weights=W)`` and trains it with plain ``keras`` ``compile/fit``
(Adam, ``--lr``, ``--epochs``, batch 16, same seed for everything):

- ``imported``: ``W`` = the imported ``.keras`` (torchvision MobileNetV2, BN eps 1e-5, torch normalisation picked up
  automatically), backbone frozen: feature extraction, only the head trains.
- ``scratch``: ``W = "none"``, the whole network trains, BatchNorm in training mode (``train_bn=True``); its
  statistics are recomputed for the final weights before testing, as ``tltf fit`` does (without that, Keras'
  slow moving averages left this arm at chance in inference mode: the 0.500 on LFW reported before).

Measured (15 epochs, 96 px, seed 0, 2 CPU cores), test accuracy: LFW imported 0.990, scratch 0.990 (faces vs
non-faces is easy enough to learn from 100 images); MNIST with 10 digits per class: imported 0.768, scratch 0.525
(chance 0.100). ``scratch_bn_inference`` and ``scratch_frozen`` stay at chance on both.
- ``scratch_bn_inference``: as ``scratch`` but BatchNorm kept in inference mode (tltf's default ``train_bn=False``).
- ``scratch_frozen``: ``W = "none"``, backbone frozen: the same head-only training as ``imported`` on random features.

Usage: ``python benchmarks/transfer_imported_vs_scratch.py [--dataset lfw|mnist|both] [--weights imported.keras]``.
Without ``--weights`` the torchvision checkpoint is fetched and imported into ``~/.cache/tltf``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tltf.keras_objects  # noqa: E402,F401
from tltf.data import offline  # noqa: E402
from tltf.models.classifier import backbone_of, build_classifier  # noqa: E402
from tltf.staging.batchnorm import recompute_batchnorm  # noqa: E402


def imported_weights() -> str:
    from tltf.weights.torchvision import import_torchvision

    out = offline.cache_dir() / "imported" / "mobilenet_v2_torchvision_224.keras"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        import_torchvision(offline.wheel_file(offline.MOBILENET_V2_TORCH, offline.MOBILENET_V2_TORCH_FILE),
                           "mobilenet_v2", out)
    return str(out)


def to_rgb(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, h, w) grey -> float32 (N, size, size, 3) in [0, 255]."""
    x = tf.image.resize(x[..., None].astype(np.float32), (size, size), method="bilinear")
    return tf.repeat(x, 3, axis=-1).numpy()


def dataset(name: str, size: int, seed: int):
    rng = np.random.default_rng(seed)
    if name == "lfw":
        x, y = offline.lfw_faces()
        classes = ["non-face", "face"]
        train = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:50] for c in (0, 1)])
        test = np.setdiff1d(np.arange(len(y)), train)
    else:
        x, y = offline.mnist_5k()
        classes = [str(d) for d in range(10)]
        picks = [rng.permutation(np.flatnonzero(y == c))[:110] for c in range(10)]
        train = np.concatenate([p[:10] for p in picks])
        test = np.concatenate([p[10:] for p in picks])
    return classes, to_rgb(x[train], size), y[train], to_rgb(x[test], size), y[test]


def run(setup: str, weights: str, data, size: int, epochs: int, lr: float, seed: int) -> dict:
    classes, x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    model = build_classifier("mobilenet_v2", classes, size, weights=weights if setup == "imported" else "none",
                             train_bn=setup == "scratch")
    backbone_of(model).trainable = setup.startswith("scratch") and setup != "scratch_frozen"
    binary = len(classes) == 2
    model.compile(keras.optimizers.Adam(lr), loss="binary_crossentropy" if binary else
                  "sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(x_train, y_train.astype(np.float32 if binary else np.int64), batch_size=16, epochs=epochs,
              shuffle=True, verbose=0)
    seconds = time.perf_counter() - start
    if setup == "scratch":  # BatchNorm statistics of the final weights, as tltf fit does (tltf.staging.batchnorm)
        import tensorflow as tf

        recompute_batchnorm(model, tf.data.Dataset.from_tensor_slices(x_train.astype(np.float32)).batch(16))
    out = model.predict(x_test, batch_size=64, verbose=0)
    pred = (out[:, 0] > 0.5).astype(int) if binary else out.argmax(1)
    return {"setup": setup, "test_accuracy": round(float((pred == y_test).mean()), 4),
            "final_train_accuracy": round(float(history.history["accuracy"][-1]), 4),
            "train_seconds": round(seconds, 1), "preprocess": model.get_layer("preprocess").mode,
            "trainable_params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["lfw", "mnist", "both"], default="both")
    parser.add_argument("--weights", help="imported .keras (default: import the torchvision checkpoint)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    weights = args.weights or imported_weights()
    names = ["lfw", "mnist"] if args.dataset == "both" else [args.dataset]
    report = []
    for name in names:
        data = dataset(name, args.image_size, args.seed)
        for setup in ("imported", "scratch", "scratch_bn_inference", "scratch_frozen"):
            row = {"dataset": name, "train": len(data[2]), "test": len(data[4]),
                   **run(setup, weights, data, args.image_size, args.epochs, args.lr, args.seed)}
            print(json.dumps(row), flush=True)
            report.append(row)
    print(f"\n{'dataset':8} {'setup':22} {'test acc':>8} {'train acc':>9}  (budget: {args.epochs} epochs, batch 16, "
          f"Adam {args.lr}, seed {args.seed}, {args.image_size}px)")
    for r in report:
        print(f"{r['dataset']:8} {r['setup']:22} {r['test_accuracy']:8.3f} {r['final_train_accuracy']:9.3f}")


if __name__ == "__main__":
    main()
