"""``tltf drift`` on real features: calibration (false alarms), power (MNIST -> UCI digits), label shift (BBSE).

Features: MobileNetV2 with torchvision's ImageNet weights (``--weights torchvision:mobilenet_v2``), frozen, pooled,
at ``--image-size`` (96 px), of the 5,000 MNIST digits (``builtin:mnist``) and the 1,797 UCI optical digits framed
like MNIST (``builtin:uci_digits``), through the feature cache.

1. **Calibration** (``--splits`` seeded splits, 100): each draws ``2 x --n`` (2 x 300) MNIST images at random and
   halves them; both halves come from one distribution, so a calibrated test reports drift in about ``alpha`` of
   the splits. Recorded per split: the MMD test's p-value (``--permutations``, 1000) and the classifier test's
   (approximate) p-value; the rates of ``p < 0.01, 0.05, 0.1``, with the binomial standard error.
2. **Power**: ``detect_drift("builtin:mnist", "builtin:uci_digits", max_samples=300)`` end to end (images ->
   features -> tests), plus the MMD p-value on cached features for ``--power-seeds`` other draws.
3. **Label shift**: a softmax classifier fitted (scikit-learn logistic regression on the features of 200 MNIST
   digits per class) and copied into a tltf ``.keras`` classifier's head; reference = 150 other digits per class
   (labelled, class 1 at 10 %); new data = 150 ones and 150 digits of the other classes from a third pool (class
   1 at 50 %). ``detect_drift(..., model=...)`` estimates the new prior by BBSE; recorded: the estimate for class 1,
   the largest error over all classes, the expected accuracy under the estimated prior and the classifier's real
   accuracy on the new data (its labels are known here), over ``--shift-seeds`` draws of the new data.

The features and the index pairs of parts 1 and 2 are saved to ``--features-out`` for the alibi-detect peer
(``benchmarks/peers/drift_alibi.py``), which runs the same pairs in its own venv.

Usage: ``python benchmarks/drift_calibration.py [--splits 100] [--n 300] [--image-size 96]
[--json benchmarks/drift_calibration.json] [--features-out /tmp/drift_features.npz]``
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from tltf.drift import classifier_test, detect_drift, mmd_test  # noqa: E402
from tltf.drift.features import from_backbone, from_model  # noqa: E402
from tltf.drift.images import load_images, subsample  # noqa: E402

WEIGHTS = "torchvision:mobilenet_v2"


def rates(p_values: np.ndarray) -> dict:
    n = len(p_values)
    return {f"rate_p_lt_{a:g}": round(float((p_values < a).mean()), 4) for a in (0.01, 0.05, 0.1)} | {
        "binomial_se_at_0.05": round(float(np.sqrt(0.05 * 0.95 / n)), 4), "splits": n,
        "median_p": round(float(np.median(p_values)), 4)}


def pooled_normal_p(auc: float, n0: int, n1: int) -> float:
    """The p-value tltf does NOT ship: all folds' pooled AUC against the Mann-Whitney normal approximation."""
    sd = math.sqrt((n0 + n1 + 1) / (12.0 * n0 * n1))
    return 0.5 * math.erfc((auc - 0.5) / sd / math.sqrt(2.0))


def calibration(x: np.ndarray, splits: int, n: int, permutations: int) -> tuple[dict, list]:
    mmd_p, clf_p, pooled_p, seconds, clf_seconds, pairs = [], [], [], [], [], []
    for seed in range(splits):
        rng = np.random.default_rng([seed, 100])
        picked = rng.choice(len(x), size=2 * n, replace=False)
        a, b = picked[:n], picked[n:]
        start = time.perf_counter()
        mmd_p.append(mmd_test(x[a], x[b], permutations, seed).p_value)
        seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        clf = classifier_test(x[a], x[b], seed=seed)
        clf_seconds.append(time.perf_counter() - start)
        clf_p.append(clf.p_value)
        pooled_p.append(pooled_normal_p(clf.auc, n, n))
        pairs.append((a, b))
    return {"mmd": rates(np.array(mmd_p)), "classifier_one_fold_mann_whitney": rates(np.array(clf_p)),
            "classifier_pooled_auc_normal_approx_not_shipped": rates(np.array(pooled_p)),
            "mmd_seconds_median": round(float(np.median(seconds)), 4),
            "classifier_seconds_median": round(float(np.median(clf_seconds)), 4),
            "mmd_p_values": [round(p, 4) for p in mmd_p]}, pairs


def power(x_ref: np.ndarray, x_new: np.ndarray, n: int, seeds: int, permutations: int) -> tuple[list, list]:
    rows, pairs = [], []
    for seed in range(seeds):
        rng = np.random.default_rng([seed, 200])
        a = rng.choice(len(x_ref), size=n, replace=False)
        b = rng.choice(len(x_new), size=n, replace=False)
        start = time.perf_counter()
        result = mmd_test(x_ref[a], x_new[b], permutations, seed)
        rows.append({"seed": seed, "p_value": result.p_value, "statistic": round(result.statistic, 5),
                     "seconds": round(time.perf_counter() - start, 3),
                     "classifier_auc": round(classifier_test(x_ref[a], x_new[b], seed=seed).auc, 4)})
        pairs.append((a, b))
    return rows, pairs


def build_model(x: np.ndarray, y: np.ndarray, image_size: int, path: Path) -> Path:
    """A tltf classifier whose head is a logistic regression fitted on the backbone's features."""
    from sklearn.linear_model import LogisticRegression

    from tltf.atomic import save_model
    from tltf.models.classifier import build_classifier, head_of

    lr = LogisticRegression(C=0.1, max_iter=5000).fit(x, y)
    model = build_classifier("mobilenet_v2", [str(d) for d in range(10)], image_size, WEIGHTS, dropout=0.0)
    head_of(model).dense.set_weights([lr.coef_.T.astype(np.float32), lr.intercept_.astype(np.float32)])
    save_model(model, path)
    return path


def label_shift(images: np.ndarray, labels: np.ndarray, x: np.ndarray, image_size: int, seeds: int,
                permutations: int, work: Path) -> dict:
    """Part 3: the planted prior (class 1 from 10 % to 50 %) against the BBSE estimate."""
    rng = np.random.default_rng(7)
    train, ref, pool = [], [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        train += list(idx[:200])
        ref += list(idx[200:350])
        pool += list(idx[350:])
    train, ref, pool = (np.sort(np.array(a)) for a in (train, ref, pool))
    model = build_model(x[train], labels[train], image_size, work / "mnist_head.keras")
    np.savez(work / "reference.npz", x=images[ref], y=labels[ref], class_names=np.array([str(d) for d in range(10)]))
    rows = []
    for seed in range(seeds):
        r = np.random.default_rng([seed, 300])
        ones = r.choice(pool[labels[pool] == 1], size=150, replace=False)
        others = r.choice(pool[labels[pool] != 1], size=150, replace=False)
        new = np.sort(np.r_[ones, others])
        np.savez(work / f"new_{seed}.npz", x=images[new], y=labels[new])
        report = detect_drift(str(work / "reference.npz"), str(work / f"new_{seed}.npz"), model=str(model),
                              max_samples=None, seed=seed, permutations=permutations)
        s = report.label_shift
        true = np.bincount(labels[new], minlength=10) / len(new)
        source = from_model(str(model))
        x_new, _ = source.features(load_images(str(work / f"new_{seed}.npz"), "--data"))
        accuracy = float((source.probabilities(x_new).argmax(1) == labels[new]).mean())
        rows.append({"seed": seed, "true_prior_1": round(float(true[1]), 4),
                     "reference_prior_1": round(float(s.reference_prior[1]), 4),
                     "predicted_rate_1": round(float(s.prediction_prior[1]), 4),
                     "estimated_prior_1": round(float(s.estimated_prior[1]), 4),
                     "error_1": round(float(abs(s.estimated_prior[1] - true[1])), 4),
                     "max_error_all_classes": round(float(np.abs(s.estimated_prior - true).max()), 4),
                     "expected_accuracy": round(s.expected_accuracy, 4), "actual_accuracy": round(accuracy, 4),
                     "reference_accuracy": round(s.reference_accuracy, 4),
                     "drift": report.drift, "mmd_p_value": report.mmd.p_value,
                     "classifier_auc": round(report.classifier.auc, 4)})
    errors = np.array([r["error_1"] for r in rows])
    return {"runs": rows, "mean_error_1": round(float(errors.mean()), 4), "max_error_1": round(float(errors.max()), 4),
            "n_reference": len(ref), "n_new": 300, "n_train_head": len(train)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--power-seeds", type=int, default=5)
    parser.add_argument("--shift-seeds", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--json", default="benchmarks/drift_calibration.json")
    parser.add_argument("--features-out", default="/tmp/drift_features.npz")
    args = parser.parse_args()

    start = time.perf_counter()
    source = from_backbone("mobilenet_v2", WEIGHTS, args.image_size)
    mnist = load_images("builtin:mnist", "--data")
    uci = load_images("builtin:uci_digits", "--data")
    x_mnist, y_mnist = source.features(mnist, 64)
    x_uci, _ = source.features(uci, 64)
    print(f"features: mnist {x_mnist.shape}, uci {x_uci.shape} in {time.perf_counter() - start:.1f}s", flush=True)

    calib, calib_pairs = calibration(x_mnist, args.splits, args.n, args.permutations)
    print("calibration:", json.dumps({k: v for k, v in calib.items() if k != "mmd_p_values"}), flush=True)
    # the two halves of UCI digits too: a second dataset, fewer splits
    calib_uci, _ = calibration(x_uci, max(20, args.splits // 5), args.n, args.permutations)
    print("calibration (uci):", json.dumps({k: v for k, v in calib_uci.items() if k != "mmd_p_values"}), flush=True)

    power_rows, power_pairs = power(x_mnist, x_uci, args.n, args.power_seeds, args.permutations)
    t = time.perf_counter()
    end_to_end = detect_drift("builtin:mnist", "builtin:uci_digits", backbone="mobilenet_v2", weights=WEIGHTS,
                              image_size=args.image_size, max_samples=args.n, seed=0,
                              permutations=args.permutations)
    e2e = {"p_value": end_to_end.mmd.p_value, "statistic": round(end_to_end.mmd.statistic, 5),
           "classifier_auc": round(end_to_end.classifier.auc, 4), "drift": end_to_end.drift,
           "seconds": round(time.perf_counter() - t, 2)}
    print("power:", json.dumps(power_rows), json.dumps(e2e), flush=True)
    # the same images as the end-to-end run (detect_drift's seeded draw), for the peer
    e2e_ref = subsample(mnist, args.n, np.random.default_rng([0, 1]))[1]
    e2e_new = subsample(uci, args.n, np.random.default_rng([0, 2]))[1]

    with tempfile.TemporaryDirectory() as tmp:
        images = np.stack([im for im, _ in mnist.split.dataset().as_numpy_iterator()])
        shift = label_shift(images, y_mnist, x_mnist, args.image_size, args.shift_seeds, args.permutations,
                            Path(tmp))
    print("label shift:", json.dumps({k: v for k, v in shift.items() if k != "runs"}), flush=True)

    np.savez(args.features_out, x_mnist=x_mnist, x_uci=x_uci,
             calib_a=np.stack([a for a, _ in calib_pairs]), calib_b=np.stack([b for _, b in calib_pairs]),
             power_a=np.stack([a for a, _ in power_pairs]), power_b=np.stack([b for _, b in power_pairs]),
             e2e_a=e2e_ref, e2e_b=e2e_new,
             mmd_calib_p=np.array(calib["mmd_p_values"]), mmd_power_p=np.array([r["p_value"] for r in power_rows]))
    result = {"settings": vars(args) | {"backbone": "mobilenet_v2", "weights": WEIGHTS},
              "calibration_mnist_halves": calib, "calibration_uci_halves": calib_uci,
              "power_mnist_vs_uci": {"features": power_rows, "end_to_end": e2e}, "label_shift": shift,
              "seconds": round(time.perf_counter() - start, 1)}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json} and {args.features_out} in {result['seconds']}s")


if __name__ == "__main__":
    main()
