"""Domain adaptation on a raw shift, as a user brings it: MNIST (5,000, labelled) -> UCI digits (1,797, unlabelled),
both as plain image folders, through ``tltf compare --adapt`` with default flags.

- ``raw``: the UCI 8x8 digits upsampled to fill a 32x32 frame (as a user's folder would hold them; MNIST's digits sit
  in a 20x20 box inside 28x28, so framing, stroke and blur all differ).
- ``framed``: the UCI digits put into MNIST's framing (20x20 box, 28x28 frame; ``tltf.data.digits``).

For each variant and backbone, every method runs ``--seeds`` seeds (same splits and budget); the script then reports
per method mean +- sd of the target accuracy, the label-free criteria, and how well each criterion agrees with the
true target accuracy over all runs (Spearman's rho, and whether its pick is the best method).

    python benchmarks/adapt_digits.py                          # ~20 min on 2 cores
    python benchmarks/adapt_digits.py --runs raw/cnn_small --seeds 0,1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

METHODS = {"cnn_small": "none,dann,mmd,coral", "cnn_small_bn": "none,adabn,mmd,mmd+adabn"}


def write_folders(root: Path) -> dict[str, tuple[Path, Path]]:
    """``{variant: (mnist folder, uci folder)}``: PNG class folders, written once."""
    from PIL import Image

    from tltf.data import offline
    from tltf.data.digits import uci_to_mnist_frame

    xs, ys = offline.mnist_5k()
    xt, yt = offline.uci_digits()
    folders = {"raw": (root / "mnist", root / "uci_raw"), "framed": (root / "mnist", root / "uci_framed")}
    images = {root / "mnist": (xs, ys, None), root / "uci_raw": (xt, yt, 32),
              root / "uci_framed": (uci_to_mnist_frame(xt, 28, 20), yt, None)}
    for folder, (x, y, size) in images.items():
        if (folder / "done").exists():
            continue
        for i, (im, c) in enumerate(zip(x, y)):
            (folder / str(int(c))).mkdir(parents=True, exist_ok=True)
            img = Image.fromarray(np.clip(np.asarray(im), 0, 255).astype(np.uint8))
            if size:
                img = img.resize((size, size), Image.BILINEAR)
            img.save(folder / str(int(c)) / f"{i:05d}.png")
        (folder / "done").write_text("ok")
    return folders


def spearman(a, b) -> float | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3:
        return None
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(result: dict) -> dict:
    """How each criterion ranks the runs against their true target accuracy."""
    from tltf.adapt.selection import CRITERIA

    runs = [r for r in result["runs"] if r.get("target_accuracy") is not None]
    out = {}
    best = max(result["summary"], key=lambda row: row["target_accuracy_mean"])["strategy"]
    for name, higher in {**CRITERIA, "target_entropy": False}.items():
        values = [(r["unsupervised"].get(name), r["target_accuracy"]) for r in runs]
        values = [(v, t) for v, t in values if v is not None]
        rho = spearman([v if higher else -v for v, _ in values], [t for _, t in values])
        rows = [row for row in result["summary"] if row.get(f"{name}_mean") is not None]
        pick = (max if higher else min)(rows, key=lambda row: row[f"{name}_mean"])["strategy"] if rows else None
        target = {row["strategy"]: row["target_accuracy_mean"] for row in result["summary"]}
        out[name] = {"spearman_rho": rho, "pick": pick, "pick_target_accuracy": target.get(pick),
                     "best": best, "best_target_accuracy": target[best]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default="raw/cnn_small,raw/cnn_small_bn,framed/cnn_small",
                        help="VARIANT/BACKBONE pairs; the methods of each backbone are in METHODS")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="default: tltf's (6 for --weights none)")
    parser.add_argument("--work", default="/tmp/tltf_adapt_digits")
    parser.add_argument("--json", default="benchmarks/adapt_digits.json")
    args = parser.parse_args()

    from tltf.compare import compare

    work = Path(args.work)
    folders = write_folders(work / "data")
    seeds = [int(s) for s in args.seeds.split(",")]
    report = {"seeds": seeds, "epochs": args.epochs or "default", "results": {}}
    for pair in args.runs.split(","):
        variant, backbone = pair.split("/")
        source, target = folders[variant]
        start = time.perf_counter()
        result = compare(str(source), work / f"{variant}_{backbone}", backbone=backbone, weights="none",
                         image_size=32, seeds=seeds, epochs=args.epochs, adapt=METHODS[backbone],
                         target_data=str(target), target_labels_for_eval=True, log=lambda line: None)
        key = f"{variant}/{backbone}"
        report["results"][key] = {
            "seconds": round(time.perf_counter() - start, 1),
            "selected": result["selected"], "criterion": result["criterion"],
            "methods": {row["strategy"]: {k: row.get(k) for k in (
                "target_accuracy_mean", "target_accuracy_sd", "val_accuracy_mean", "dev_risk_mean", "snd_mean",
                "target_entropy_mean")} for row in result["summary"]},
            "agreement": agreement(result)}
        print(f"\n== {key} ({report['results'][key]['seconds']} s)")
        for name, row in report["results"][key]["methods"].items():
            print(f"{name:<12} target {row['target_accuracy_mean']:.3f} +- {row['target_accuracy_sd'] or 0:.3f}"
                  f"   dev {row['dev_risk_mean'] or float('nan'):.3f}   snd {row['snd_mean']:.3f}")
        for name, a in report["results"][key]["agreement"].items():
            print(f"  {name:<15} rho {a['spearman_rho'] if a['spearman_rho'] is not None else float('nan'):+.2f}"
                  f"  picks {a['pick']} ({a['pick_target_accuracy']:.3f}; best {a['best']} "
                  f"{a['best_target_accuracy']:.3f})")
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
