"""Zero-shot from class attributes (issue 16): compositional coloured shapes, and digits from a hand-written table.

- ``shapes``: 3 colours x 3 shapes = 9 classes, attributes = colour and shape (one-hot); trained on 6 pairs
  (600 images), evaluated on 450 images of all 9 (150 of the 3 unseen pairs: red circle, green square, blue
  triangle).
- ``digits``: MNIST 5k; a hand-written table of strokes and loops (``DIGIT_TABLE``); trained on 7 digits (100
  images each), evaluated on 50 images of each of the 10 (unseen: 1, 5, 8, each describable by attributes the
  seen digits carry: 1 = a vertical stroke alone, 5 = top bar + lower right bulge, 8 = upper + lower loop).

Each: ``tltf fit --attributes`` on frozen MobileNetV2 features (torchvision ImageNet weights, 64 px, ``--stage
feature``, 20 epochs), 3 seeds; generalised zero-shot (all classes compete: seen, unseen, harmonic mean), with
and without calibrated stacking, and the unseen images among unseen classes only.

Usage: ``python benchmarks/zeroshot.py [--tasks shapes,digits] [--seeds 3] [--json benchmarks/zeroshot.json]``
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIGIT_ATTRIBUTES = ("big_loop", "loop_top", "loop_bottom", "vertical", "bar_top", "bar_bottom", "bar_middle",
                    "bulge_right_top", "bulge_right_bottom", "diagonal")
DIGIT_TABLE = {  # digit -> the attributes it has
    "0": {"big_loop"}, "1": {"vertical"}, "2": {"bar_bottom", "bulge_right_top", "diagonal"},
    "3": {"bulge_right_top", "bulge_right_bottom"}, "4": {"vertical", "bar_middle", "diagonal"},
    "5": {"bar_top", "bulge_right_bottom"}, "6": {"loop_bottom"}, "7": {"bar_top", "diagonal"},
    "8": {"loop_top", "loop_bottom"}, "9": {"loop_top", "vertical"},
}
UNSEEN_DIGITS = ("1", "5", "8")
UNSEEN_SHAPES = (("red", "circle"), ("green", "square"), ("blue", "triangle"))


def _write_table(path: Path, header, rows) -> Path:
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def shapes_task(work: Path, seed: int):
    from tltf.data.builtin import COLOURS, SHAPES, coloured_shapes

    combos = [(c, s) for c in COLOURS for s in SHAPES]
    seen = [c for c in combos if c not in UNSEEN_SHAPES]
    table = _write_table(work / "classes.csv", ("class", *COLOURS, *SHAPES),
                         [[f"{c}_{s}", *[int(c == k) for k in COLOURS], *[int(s == k) for k in SHAPES]]
                          for c, s in combos])
    x, y = coloured_shapes(600, seen, 64, seed=seed)
    np.savez(work / "seen.npz", x=x, y=y, class_names=np.array([f"{c}_{s}" for c, s in seen]))
    xe, ye = coloured_shapes(450, combos, 64, seed=1000 + seed)
    np.savez(work / "eval.npz", x=xe, y=ye, class_names=np.array([f"{c}_{s}" for c, s in combos]))
    return table


def digits_task(work: Path, seed: int):
    from tltf.data import offline

    table = _write_table(work / "classes.csv", ("class", *DIGIT_ATTRIBUTES),
                         [[d, *[int(a in DIGIT_TABLE[d]) for a in DIGIT_ATTRIBUTES]] for d in DIGIT_TABLE])
    x, y = offline.mnist_5k()
    x = np.repeat(np.asarray(x, np.uint8)[..., None], 3, axis=-1)
    rng = np.random.default_rng(seed)
    seen = [d for d in range(10) if str(d) not in UNSEEN_DIGITS]
    train, test = [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(y == d))
        test.append(idx[:50])
        if d in seen:
            train.append(idx[50:150])
    train, test = np.concatenate(train), np.concatenate(test)
    remap = {d: i for i, d in enumerate(seen)}
    np.savez(work / "seen.npz", x=x[train], y=np.array([remap[int(v)] for v in y[train]]),
             class_names=np.array([str(d) for d in seen]))
    np.savez(work / "eval.npz", x=x[test], y=y[test], class_names=np.array([str(d) for d in range(10)]))
    return table


def main() -> None:
    from tltf.training import FitConfig, fit
    from tltf.weights.pretrained import resolve

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="shapes,digits")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--work", default="runs/zeroshot")
    parser.add_argument("--json", default="benchmarks/zeroshot.json")
    args = parser.parse_args()
    weights = str(resolve("torchvision:mobilenet_v2"))
    runs = []
    for task in args.tasks.split(","):
        for seed in range(args.seeds):
            work = Path(args.work) / task / f"seed{seed}"
            work.mkdir(parents=True, exist_ok=True)
            table = {"shapes": shapes_task, "digits": digits_task}[task](work, seed)
            metrics = fit(FitConfig(data=str(work / "seen.npz"), weights=weights, image_size=args.image_size,
                                    stage="feature", epochs=args.epochs, attributes=str(table),
                                    eval_data=str(work / "eval.npz"), seed=seed, out=str(work / "run"),
                                    tensorboard=False, refit="off"), overwrite=True, verbose=0)
            zs = metrics["zero_shot"]
            row = {"task": task, "seed": seed, "gamma": zs["gamma"], **{k: zs["eval"][k] for k in (
                "seen_accuracy", "unseen_accuracy", "harmonic_mean", "unseen_only_accuracy")},
                   "uncalibrated_seen": zs["eval"]["uncalibrated"]["seen_accuracy"],
                   "uncalibrated_unseen": zs["eval"]["uncalibrated"]["unseen_accuracy"],
                   "uncalibrated_harmonic_mean": zs["eval"]["uncalibrated"]["harmonic_mean"]}
            runs.append(row)
            print(json.dumps(row), flush=True)
    summary = []
    for task in dict.fromkeys(r["task"] for r in runs):
        rows = [r for r in runs if r["task"] == task]
        summary.append({"task": task, "n": len(rows), **{
            key: [round(float(np.mean([r[key] for r in rows])), 3), round(float(np.std([r[key] for r in rows])), 3)]
            for key in rows[0] if key not in ("task", "seed")}})
    Path(args.json).write_text(json.dumps({"settings": vars(args), "summary": summary, "runs": runs}, indent=2)
                               + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
