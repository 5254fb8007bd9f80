"""Peer check: confident learning (cleanlab's ``find_label_issues``, Northcutt et al. 2021) against tltf's influence
scores on the same flipped MNIST labels and the same features.

Reads what ``benchmarks/instances_noisy_mnist.py`` saved per seed (``--work/KIND_NOISE/seedK/scores.npz``): the
penultimate features of the model trained on the noisy labels (4,000 training digits), the noisy and true labels,
tltf's scores (validation set: 500 clean held-out digits) and its ``auto`` drop count; and ``noisy.npz`` for
training again.

cleanlab needs out-of-sample predicted probabilities: 5-fold stratified, seeded cross-validation of the *same*
head on the *same* features (softmax regression on standardised features, ``l2`` as tltf's, refitted to
convergence by ``tltf.instances.influence.fit_head``; each fold standardised by its training part). Then

- ``find_label_issues(labels, pred_probs)`` (cleanlab's defaults: ``filter_by="prune_by_noise_rate"``): its own
  count of issues, their precision and recall against the flipped labels;
- ``precision_at_k``: the flipped share among the k lowest ``get_label_quality_scores`` (self-confidence), k = the
  number flipped, beside tltf's top k;
- training again without cleanlab's issues (same settings and training seeds as the benchmark's arms), beside
  tltf's ``positive`` rule.

cleanlab needs no validation set (it cross-validates on the noisy training data itself); tltf's scores need one,
so the comparison is also given for tltf with 20 % of the *noisy* data held out as its validation set (read from
the main benchmark's JSON: ``val_noisy_holdout/error``).

Usage (the repo's venv with the ``bench`` extra: ``pip install -e .[bench]``; after the main benchmark)::

    python benchmarks/peers/instances_cleanlab.py [--seeds 0,1,2] [--label random_0.2] [--work /tmp/tltf_instances]
        [--json benchmarks/peers/instances_cleanlab.json]
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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def cross_validated_probabilities(x: np.ndarray, y: np.ndarray, l2: float, folds: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    from tltf.instances.influence import fit_head

    probs = np.zeros((len(y), 10))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        mean, std = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
        head, _ = fit_head((x[train] - mean) / std, y[train], 10, l2, tol=1e-8)
        probs[test] = head.probabilities((x[test] - mean) / std)
    return probs


def run_seed(seed: int, args, main_runs: dict) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from instances_noisy_mnist import precision_at, train_arm, write_npz

    folder = Path(args.work) / args.label / f"seed{seed}"
    saved = np.load(folder / "scores.npz")
    y, flipped = saved["y_noisy"], saved["y_noisy"] != saved["y_true"]
    k = int(flipped.sum())
    start = time.perf_counter()
    probs = cross_validated_probabilities(saved["x_train"], y, float(saved["l2"]), args.folds, seed)
    issues = find_label_issues(labels=y, pred_probs=probs)
    seconds = time.perf_counter() - start
    quality = get_label_quality_scores(y, probs)
    ours = saved["scores"]
    drop = int(saved["auto_drop"])
    ours_top = np.lexsort((np.arange(len(ours)), -ours))[:drop]
    result = {"seed": seed, "flipped": k,
              "cleanlab": {"count": int(issues.sum()), "precision": float(flipped[issues].mean()),
                           "recall": float(flipped[issues].sum() / k),
                           "precision_at_k": precision_at(-quality, flipped, k),
                           "seconds": round(seconds, 2), "cv_accuracy_given": float((probs.argmax(1) == y).mean())},
              "tltf": {"count": drop, "precision": float(flipped[ours_top].mean()),
                       "recall": float(flipped[ours_top].sum() / k), "precision_at_k": precision_at(ours, flipped, k)}}
    run = main_runs.get(seed)
    if run is not None:
        noisy = run["variants"]["val_noisy_holdout/error"]
        result["tltf_noisy_holdout"] = {"count": noisy["auto_drop"], "precision": noisy["auto_precision"],
                                        "recall": noisy["auto_recall"], "precision_at_k": noisy["precision_at_k"],
                                        "scored": noisy["scored"]}
    if not args.no_retrain:
        data = np.load(folder / "noisy.npz")
        keep = ~issues
        npz = write_npz(folder / f"kept_cleanlab_{int(issues.sum())}.npz", data["x"][keep], data["y"][keep],
                        data["x_val"], data["y_val"])
        half = len(data["y_val"]) // 2
        result["cleanlab"]["retrained"] = train_arm(npz, folder / f"kept_cleanlab_{int(issues.sum())}", seed, args,
                                                    data["x_val"][half:], data["y_val"][half:])
        if run is not None:
            result["tltf"]["retrained"] = run["fits"].get("positive")
            result["noisy"], result["clean"] = run["fits"]["noisy"], run["fits"]["clean"]
    print(f"seed {seed}: cleanlab {result['cleanlab']['count']} issues, precision "
          f"{result['cleanlab']['precision']:.3f}, recall {result['cleanlab']['recall']:.3f}; tltf {drop}, precision "
          f"{result['tltf']['precision']:.3f}, recall {result['tltf']['recall']:.3f}", flush=True)
    return result


def main() -> None:
    import cleanlab

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--label", default="random_0.2", help="KIND_NOISE of the main benchmark's run")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-seeds", type=int, default=3, help="fits per arm, as in the main benchmark")
    parser.add_argument("--no-retrain", action="store_true")
    parser.add_argument("--work", default="/tmp/tltf_instances")
    parser.add_argument("--main-json", default="benchmarks/instances_noisy_mnist.json")
    parser.add_argument("--json", default="benchmarks/peers/instances_cleanlab.json")
    args = parser.parse_args()
    main_path = Path(args.main_json)
    main_runs = {}
    if main_path.exists():
        entry = json.loads(main_path.read_text()).get("results", {}).get(args.label, {})
        main_runs = {r["seed"]: r for r in entry.get("runs", [])}
    runs = [run_seed(int(s), args, main_runs) for s in args.seeds.split(",")]

    def mean(path):
        values = []
        for r in runs:
            v = r
            for key in path:
                v = v.get(key) if isinstance(v, dict) else None
            if v is not None:
                values.append(v)
        return round(float(np.mean(values)), 4) if values else None

    summary = {who: {m: mean([who, m]) for m in ("count", "precision", "recall", "precision_at_k")}
               for who in ("cleanlab", "tltf", "tltf_noisy_holdout")}
    for who in ("cleanlab", "tltf"):
        summary[who]["accuracy"] = mean([who, "retrained", "val_accuracy"])
        summary[who]["accuracy_b"] = mean([who, "retrained", "accuracy_b"])
    summary["noisy_accuracy"], summary["clean_accuracy"] = mean(["noisy", "val_accuracy"]), mean(["clean",
                                                                                                   "val_accuracy"])
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("note", __doc__.split("\n\n")[0])
    data.setdefault("results", {})[args.label] = {"settings": {"cleanlab": cleanlab.__version__, "folds": args.folds,
                                                               "seeds": [r["seed"] for r in runs]},
                                                  "summary": summary, "runs": runs}
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
