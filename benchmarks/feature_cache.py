"""Feature extraction with and without the feature cache: seconds per epoch and head accuracy.

    python benchmarks/feature_cache.py [--data builtin:shapes] [--weights torchvision:mobilenet_v2]
                                       [--image-size 96] [--epochs 6] [--json benchmarks/feature_cache.json]

Four ``tltf fit --stage feature --augment none`` runs with the same seed and data:

1. ``uncached`` (twice, ``uncached_again``: the image pipeline shuffles after a non-deterministic parallel decode,
   so the uncached run's own batch order, and accuracy, vary from run to run): ``--no-feature-cache``, the frozen
   backbone runs on every image in every epoch;
2. ``cached_cold``: an empty feature cache, so the features are computed once (``extract_seconds``) and the head
   trains on them;
3. ``cached_warm``: the same command again, the features read from the cache.

Reported per run: the first epoch's seconds, the median seconds of the later epochs (``EpochTiming``: training
plus validation, from ``history.csv``), total wall time, val/test accuracy. The speed-up is the uncached median
epoch over the cached one. The feature cache goes to a temporary folder (the weights cache is the usual one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tltf.api import FitConfig, fit  # noqa: E402
from tltf.reporting import read_history  # noqa: E402
from tltf.strategies import features  # noqa: E402


def run(name: str, root: Path, **kw) -> dict:
    config = FitConfig(out=str(root / name), stage="feature", augment="none", tensorboard=False, **kw)
    start = time.perf_counter()
    metrics = fit(config, overwrite=True, verbose=0)
    wall = time.perf_counter() - start
    seconds = [row["seconds"] for row in read_history(root / name / "history.csv")]
    cache = metrics.get("feature_cache") or {}
    return {"run": name, "first_epoch_s": round(seconds[0], 4),
            "later_epoch_median_s": round(statistics.median(seconds[1:]), 4) if len(seconds) > 1 else None,
            "extract_s": cache.get("extract_seconds"), "wall_s": round(wall, 2),
            "val_accuracy": metrics["val_accuracy"], "test_accuracy": metrics.get("test_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="builtin:shapes")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--weights", default="torchvision:mobilenet_v2")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="Also write the results here.")
    args = parser.parse_args()
    common = dict(data=args.data, backbone=args.backbone, weights=args.weights, image_size=args.image_size,
                  epochs=args.epochs, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        features.cache_root = lambda: root / "feature-cache"  # a cold cache for the first cached run
        rows = [run("uncached", root, feature_cache=False, **common),
                run("uncached_again", root, feature_cache=False, **common),  # the uncached run's own spread
                run("cached_cold", root, **common),
                run("cached_warm", root, **common)]
    uncached = rows[0]["later_epoch_median_s"]
    for row in rows[2:]:
        row["speedup_per_epoch"] = round(uncached / row["later_epoch_median_s"], 1)
    print(f"{args.backbone} ({args.weights}) on {args.data}, {args.image_size}px, {args.epochs} epochs, "
          f"seed {args.seed}")
    print(f"{'run':<13}{'epoch 1 s':>10}{'later s':>9}{'extract s':>10}{'wall s':>8}{'val':>7}{'test':>7}"
          f"{'speed-up':>9}")
    for r in rows:
        print(f"{r['run']:<13}{r['first_epoch_s']:>10.3f}{r['later_epoch_median_s']:>9.3f}"
              f"{r['extract_s'] if r['extract_s'] is not None else '-':>10}{r['wall_s']:>8.1f}"
              f"{r['val_accuracy']:>7.3f}{r['test_accuracy']:>7.3f}"
              f"{(str(r['speedup_per_epoch']) + 'x') if 'speedup_per_epoch' in r else '-':>9}")
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": {**common}, "runs": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
