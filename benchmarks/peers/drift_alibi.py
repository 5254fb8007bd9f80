"""Peer check: alibi-detect's MMD drift detector (TensorFlow backend) on the very features and pairs of
``benchmarks/drift_calibration.py``, for p-values and run time side by side with ``tltf drift``'s MMD test.

alibi-detect must NOT be installed into tltf's own venv; it lives in a separate one (it pins its own TensorFlow)::

    # 1. features and index pairs, once (needs tltf: the repo's venv)
    python benchmarks/drift_calibration.py                  # -> /tmp/drift_features.npz

    # 2. the peer venv (Python 3.11, CPU)
    python3 -m venv /tmp/alibi-venv
    /tmp/alibi-venv/bin/pip install "alibi-detect[tensorflow]==0.13.0"
    # got alibi-detect 0.13.0, tensorflow 2.18.1, tf-keras 2.18.0, numpy 1.26.4, scikit-learn 1.9.1

    # 3. the runs (reads only the .npz; no tltf import)
    /tmp/alibi-venv/bin/python benchmarks/peers/drift_alibi.py --json benchmarks/peers/drift_alibi.json

What alibi-detect computes (``MMDDriftTF``, defaults kept except ``n_permutations``): a Gaussian RBF kernel whose
bandwidth is set once from the reference sample (``configure_kernel_from_x_ref=True``: the median heuristic on
reference-reference distances), unbiased MMD² with a zeroed kernel diagonal, and the p-value
``mean(observed <= permuted)`` over ``n_permutations`` random relabellings, one TensorFlow call each. tltf's
``mmd_test``: bandwidth from the pooled sample's median distance, the same unbiased MMD², and
``(1 + #{permuted >= observed}) / (1 + B)`` with all permutations as a few matrix products in numpy.

Recorded per pair: alibi's p-value and MMD², tltf's p-value (from the .npz), alibi's wall time for
``MMDDrift(x_ref)`` + ``predict(x)``. Pairs: the calibration splits (two halves of MNIST features: no drift), the
power pairs (MNIST vs UCI digits, 300 each) and the end-to-end pair of ``detect_drift``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def alibi_p(x_ref: np.ndarray, x: np.ndarray, permutations: int, seed: int) -> dict:
    import tensorflow as tf
    from alibi_detect.cd import MMDDrift

    np.random.seed(seed)
    tf.random.set_seed(seed)
    start = time.perf_counter()
    detector = MMDDrift(x_ref, backend="tensorflow", p_val=0.05, n_permutations=permutations)
    prediction = detector.predict(x)["data"]
    return {"p_value": float(prediction["p_val"]), "mmd2": float(prediction["distance"]),
            "drift": bool(prediction["is_drift"]), "seconds": round(time.perf_counter() - start, 3)}


def rates(p: np.ndarray) -> dict:
    return {f"rate_p_lt_{a:g}": round(float((p < a).mean()), 4) for a in (0.01, 0.05, 0.1)} | {
        "median_p": round(float(np.median(p)), 4), "splits": int(len(p))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="/tmp/drift_features.npz")
    parser.add_argument("--permutations", type=int, default=1000)
    parser.add_argument("--splits", type=int, default=100, help="Calibration splits to run (of those saved).")
    parser.add_argument("--json", default="benchmarks/peers/drift_alibi.json")
    args = parser.parse_args()

    import alibi_detect
    import tensorflow as tf

    f = np.load(args.features)
    x_mnist, x_uci = f["x_mnist"], f["x_uci"]
    calib = []
    for i in range(min(args.splits, len(f["calib_a"]))):
        row = alibi_p(x_mnist[f["calib_a"][i]], x_mnist[f["calib_b"][i]], args.permutations, i)
        calib.append({"split": i, **row, "tltf_p_value": float(f["mmd_calib_p"][i])})
        if i % 20 == 19:
            print(f"calibration split {i + 1}: {json.dumps(rates(np.array([r['p_value'] for r in calib])))}",
                  flush=True)
    power = []
    for i in range(len(f["power_a"])):
        row = alibi_p(x_mnist[f["power_a"][i]], x_uci[f["power_b"][i]], args.permutations, i)
        power.append({"seed": i, **row, "tltf_p_value": float(f["mmd_power_p"][i])})
    e2e = alibi_p(x_mnist[f["e2e_a"]], x_uci[f["e2e_b"]], args.permutations, 0)
    alibi = np.array([r["p_value"] for r in calib])
    ours = np.array([r["tltf_p_value"] for r in calib])
    result = {"environment": {"alibi_detect": alibi_detect.__version__, "tensorflow": tf.__version__,
                              "numpy": np.__version__, "python": platform.python_version()},
              "settings": vars(args),
              "calibration": {"alibi": rates(alibi), "tltf": rates(ours),
                              "p_value_correlation": round(float(np.corrcoef(alibi, ours)[0, 1]), 4),
                              "alibi_seconds_median": round(float(np.median([r["seconds"] for r in calib])), 3)},
              "power": power, "end_to_end_pair": e2e, "calibration_runs": calib}
    with open(args.json, "w") as out:
        out.write(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "calibration_runs"}, indent=1))


if __name__ == "__main__":
    main()
