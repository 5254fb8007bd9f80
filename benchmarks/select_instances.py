"""End to end: ``tltf fit --select-instances auto`` on MNIST with flipped labels (the loop of Wang et al., arXiv
1809.02776: train, score the training images by influence on the validation loss, drop the harmful, train again).

Data (offline, ``tltf.data.offline.mnist_5k()``, 500 digits per class; seeded by the data seed):

- ``balanced``: a seeded permutation gives 4,000 training digits and 1,000 held-out digits; 20 % of the training
  labels are flipped to a random other class. The held-out digits, labels clean, are the ``.npz``'s
  ``x_test``/``y_test`` (tltf's ``test_accuracy``).
- ``imbalanced`` (Wang et al.'s setting: one class is 90 % of the training data): 100 digits per class are held
  out (1,000, balanced, clean) as the test set; class 0 gives all of its remaining 400 digits and classes 1-9
  give ``round(400 / 9)`` = 44 between them (5 or 4 each), so class 0 is 90 % of 444 training digits; 20 % flips.
  mnist_5k has only 500 digits per class, so the 2,700 + 300 of the brief cannot be drawn without repeats.

Settings: ``backbone=cnn_small, weights=none, image_size=28, epochs=6, tensorboard=False, refit=off`` and the
default ``val_split`` 0.2, held out of the *noisy* training data (stratified by the noisy labels, seeded by the
config seed = the data seed): the selection scores against that noisy hold-out.

Arms per data seed:

- (a) ``noisy``: a plain fit on the noisy labels. This is exactly the first run of arm (b) (``OUT/selection``:
  ``fit_with_selection`` runs the same settings with ``refit=off`` and no selection), so it is read from there
  instead of being trained a second time;
- (b) ``select``: ``select_instances="auto"``;
- (c) ``clean``: a plain fit on the correctly labelled subset (the same val_split 0.2 of it held out).

Reported: ``test_accuracy`` (and the mean per-class test accuracy), ``recovered`` = (b - a) / (c - a), and from
``metrics["instances"]``: how many were dropped, the flipped share of the dropped positions (precision) and the
share of the flipped labels in the scored training split that were dropped (recall). Positions are indices into
the ``.npz``'s ``x``; the scored split is ``tltf.data.load_data(npz, 0.2, seed).train``.

Usage: ``python benchmarks/select_instances.py [--seeds 0,1] [--variants balanced,imbalanced]
[--work runs/select_instances] [--json benchmarks/select_instances.json]``. Finished arms are read back.
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

NOISE = 0.2
VAL_SPLIT = 0.2


def make_data(variant: str, seed: int):
    """``(x_train, y_noisy, y_true, x_test, y_test)``."""
    from tltf.data.offline import mnist_5k

    x, y = mnist_5k()
    y = y.astype(np.int64)
    rng = np.random.default_rng(seed)
    if variant == "balanced":
        order = rng.permutation(len(y))
        train, test = np.sort(order[:4000]), np.sort(order[4000:])
    elif variant == "imbalanced":
        test, rest = [], {}
        for c in range(10):
            idx = rng.permutation(np.flatnonzero(y == c))
            test.append(idx[:100])
            rest[c] = idx[100:]
        majority = len(rest[0])                      # 400
        minority = int(round(majority / 9))          # 44: class 0 is 90 %
        per = [minority // 9 + (1 if k < minority % 9 else 0) for k in range(9)]
        train = np.sort(np.concatenate([rest[0]] + [rest[c + 1][:per[c]] for c in range(9)]))
        test = np.sort(np.concatenate(test))
    else:
        raise SystemExit(f"unknown variant {variant}")
    y_true = y[train]
    y_noisy = y_true.copy()
    flip = rng.choice(len(train), int(round(NOISE * len(train))), replace=False)
    y_noisy[flip] = (y_true[flip] + rng.integers(1, 10, len(flip))) % 10
    return x[train][..., None], y_noisy, y_true, x[test][..., None], y[test]


def write_npz(path: Path, x, y, x_test, y_test) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test, class_names=np.array([str(d) for d in range(10)]))
    return path


def config_for(npz: Path, out: Path, seed: int, epochs: int, select: str | None):
    from tltf.training import FitConfig

    return FitConfig(data=str(npz), backbone="cnn_small", weights="none", image_size=28, epochs=epochs, seed=seed,
                     out=str(out), tensorboard=False, refit="off", val_split=VAL_SPLIT, select_instances=select)


def run_fit(npz: Path, out: Path, seed: int, epochs: int, select: str | None) -> tuple[dict, float | None]:
    """``(metrics, seconds)``; a finished run (``bench_done.json`` marker written here) is read back (seconds None)."""
    from tltf.training import fit

    marker = out / "bench_done.json"
    if marker.exists():
        saved = json.loads(marker.read_text())
        return json.loads((out / "metrics.json").read_text()), saved["seconds"]
    start = time.perf_counter()
    metrics = fit(config_for(npz, out, seed, epochs, select), overwrite=True, verbose=0)
    seconds = round(time.perf_counter() - start, 1)
    marker.write_text(json.dumps({"seconds": seconds}))
    return metrics, seconds


def test_figures(metrics: dict, weights: np.ndarray) -> dict:
    """Test figures; ``test_accuracy_train_mix``: the per-class accuracies weighted by the training class shares
    (the accuracy on a test set drawn like the training data; = test_accuracy for the balanced variant)."""
    per_class = metrics.get("test", {}).get("per_class", {})
    values = [v for v in per_class.values() if v is not None]
    recall = np.array([per_class.get(str(c)) or 0.0 for c in range(10)])
    return {"test_accuracy": metrics.get("test_accuracy"),
            "test_per_class_mean": float(np.mean(values)) if values else None,
            "test_accuracy_train_mix": float((recall * weights).sum() / weights.sum()),
            "test_per_class": per_class, "num_train": metrics.get("num_train"), "num_val": metrics.get("num_val"),
            "val_accuracy": metrics.get("val_accuracy")}


def label(variant: str, epochs: int) -> str:
    """The JSON key and work folder: the variant, with ``_epochsN`` when not the default 6 epochs."""
    return variant if epochs == 6 else f"{variant}_epochs{epochs}"


def run_seed(variant: str, seed: int, args, work: Path) -> dict:
    from tltf.data import load_data
    from tltf.instances.items import source_indices

    folder = work / label(variant, args.epochs) / f"seed{seed}"
    x, y_noisy, y_true, x_test, y_test = make_data(variant, seed)
    flipped = y_noisy != y_true
    noisy_npz = write_npz(folder / "noisy.npz", x, y_noisy, x_test, y_test)
    clean_npz = write_npz(folder / "clean.npz", x[~flipped], y_noisy[~flipped], x_test, y_test)

    source = load_data(str(noisy_npz), VAL_SPLIT, seed)
    train_pos, val_pos = source_indices(source.train), source_indices(source.val)
    flipped_train = int(flipped[train_pos].sum())
    result = {"variant": variant, "seed": seed, "num_train_total": int(len(y_noisy)), "flipped": int(flipped.sum()),
              "flipped_in_scored_train": flipped_train, "flipped_in_val": int(flipped[val_pos].sum()),
              "num_scored_train": int(len(train_pos)), "num_val": int(len(val_pos)),
              "train_class_counts": np.bincount(y_true, minlength=10).tolist()}

    select, sel_seconds = run_fit(noisy_npz, folder / "select", seed, args.epochs, "auto")
    noisy = json.loads((folder / "select" / "selection" / "metrics.json").read_text())
    clean, clean_seconds = run_fit(clean_npz, folder / "clean", seed, args.epochs, None)

    info = select["instances"]
    positions = np.asarray(info["positions"], dtype=np.int64)
    hit = int(flipped[positions].sum()) if len(positions) else 0
    mix = np.bincount(y_true, minlength=10).astype(float)
    result["arms"] = {"a_noisy": test_figures(noisy, mix), "b_select": test_figures(select, mix),
                      "c_clean": test_figures(clean, mix)}
    result["arms"]["a_noisy"]["source"] = "select/selection (the first run of arm b: identical settings)"
    a, b, c = (result["arms"][k]["test_accuracy"] for k in ("a_noisy", "b_select", "c_clean"))
    result["recovered"] = (b - a) / (c - a) if c != a else None
    pa, pb, pc = (result["arms"][k]["test_per_class_mean"] for k in ("a_noisy", "b_select", "c_clean"))
    result["recovered_per_class_mean"] = (pb - pa) / (pc - pa) if pc != pa else None
    result["instances"] = {"rule": info["rule"], "scored": info["scored"], "dropped": info["dropped"],
                           "dropped_flipped": hit,
                           "precision": hit / len(positions) if len(positions) else None,
                           "recall": hit / flipped_train if flipped_train else None,
                           "dropped_not_in_train": int(np.setdiff1d(positions, train_pos).size),
                           "dropped_by_true_class": np.bincount(y_true[positions], minlength=10).tolist(),
                           "scoring": info.get("scoring")}
    result["seconds"] = {"select_total": sel_seconds, "clean": clean_seconds,
                         "noisy_first_run_train": noisy.get("train_seconds_this_session"),
                         "select_final_train": select.get("train_seconds_this_session")}
    return result


def summarise(rows: list[dict]) -> dict:
    def mean(key):
        values = [key(r) for r in rows]
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    out = {k: mean(lambda r, k=k: r["arms"][k]["test_accuracy"]) for k in ("a_noisy", "b_select", "c_clean")}
    out.update({f"{k}_per_class_mean": mean(lambda r, k=k: r["arms"][k]["test_per_class_mean"])
                for k in ("a_noisy", "b_select", "c_clean")})
    out.update({f"{k}_train_mix": mean(lambda r, k=k: r["arms"][k]["test_accuracy_train_mix"])
                for k in ("a_noisy", "b_select", "c_clean")})
    out["recovered_mean_of_seeds"] = mean(lambda r: r["recovered"])
    a, b, c = out["a_noisy"], out["b_select"], out["c_clean"]
    out["recovered_of_means"] = (b - a) / (c - a) if None not in (a, b, c) and c != a else None
    for k in ("dropped", "precision", "recall"):
        out[k] = mean(lambda r, k=k: r["instances"][k])
    out["seeds"] = [r["seed"] for r in rows]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--variants", default="balanced,imbalanced")
    parser.add_argument("--imbalanced-seeds", default="0", help="seeds of the imbalanced variant")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--primary-seeds", default="0,1",
                        help="seeds of 'summary' (the others, run as extra checks of the spread, are in 'summary_all')")
    parser.add_argument("--work", default="runs/select_instances")
    parser.add_argument("--json", default="benchmarks/select_instances.json")
    args = parser.parse_args()
    work = Path(args.work)
    path = Path(args.json)
    report = json.loads(path.read_text()) if path.exists() else {}
    report.setdefault("settings", {"backbone": "cnn_small", "weights": "none", "image_size": 28,
                                   "epochs": args.epochs, "refit": "off", "val_split": VAL_SPLIT, "noise": NOISE,
                                   "noise_kind": "random other class", "select_instances": "auto"})
    for variant in args.variants.split(","):
        seeds = args.imbalanced_seeds if variant == "imbalanced" else args.seeds
        key = label(variant, args.epochs)
        rows = report.get(key, {}).get("seeds", [])
        for seed in (int(s) for s in seeds.split(",")):
            start = time.perf_counter()
            row = run_seed(variant, seed, args, work)
            row["wall_seconds"] = round(time.perf_counter() - start, 1)
            rows = [r for r in rows if r["seed"] != seed] + [row]
            rows.sort(key=lambda r: r["seed"])
            primary = {int(s) for s in args.primary_seeds.split(",")}
            if variant == "imbalanced":
                primary = {0}  # the brief's one seed
            main_rows = [r for r in rows if r["seed"] in primary] or rows
            report[key] = {"epochs": args.epochs, "seeds": rows, "summary": summarise(main_rows), "summary_all": summarise(rows)}
            path.write_text(json.dumps(report, indent=1) + "\n")
            arms = row["arms"]
            print(f"{key} seed {seed}: test a {arms['a_noisy']['test_accuracy']:.4f} b "
                  f"{arms['b_select']['test_accuracy']:.4f} c {arms['c_clean']['test_accuracy']:.4f} "
                  f"recovered {row['recovered']}; dropped {row['instances']['dropped']} precision "
                  f"{row['instances']['precision']} recall {row['instances']['recall']} ({row['wall_seconds']} s)",
                  flush=True)


if __name__ == "__main__":
    main()
