"""Which labels are wrong? ``tltf.instances`` on MNIST with flipped labels: precision of the top of the scores,
accuracy after dropping the harmful examples and training again, influence vs exact leave-one-out, timing.

Data (offline, ``tltf.data.offline.mnist_5k()``, 500 digits per class): a seeded permutation gives 4,000 training
digits and 1,000 held-out digits whose labels are left clean. ``--noise`` of the training labels are flipped
(seeded): ``random`` to any other class, ``pair`` to the next class (c -> c + 1 mod 10). The held-out digits are
split in two halves: **A** (500) is the validation set the scores are computed against (``--val``), **B** (500)
is touched by nothing but the final accuracy. Training is ``tltf fit`` with ``--backbone cnn_small --weights none
--image-size 28 --epochs 6`` (the data's ``x_val`` = the 1,000 held-out digits, so all 4,000 train and nothing
selects on the held-out digits: the model saved is the last epoch's).

Per seed:

1. ``noisy``: trained on the 4,000 with their noisy labels; ``clean``: on the unflipped ones only (3,200 at 20 %).
   Every arm is ``--train-seeds`` fits (training seeds ``seed``, ``seed + 100``, ...) whose accuracies are
   averaged: the last epoch's accuracy moves by about a point from fit to fit, as much as the gaps measured;
2. scores of the 4,000 (``tltf.instances.score_data(model, noisy.npz, val=A.npz)``, the ``noisy`` arm's first
   model); ``precision_at_k``: the share of flipped labels among the top k, k = the number flipped. Variants on the
   same features: the 1,000 held-out digits as validation set, the cross-entropy as validation loss, no head
   refit, a grid of ``l2``, the model's own loss on the given label as the ranking, and no clean data at all (20 %
   of the *noisy* training data held out as the validation set, the other 80 % scored);
3. drop by each rule (``positive``: score > 0, ``knee``; ``oracle``: as many as were flipped, from the top of the
   scores, with ``--rules``) and train again on the rest: accuracy on all 1,000 held-out digits and on B alone;
   ``recovered`` (summary): (acc - noisy) / (clean - noisy) over the means of all seeds;
4. ``loo``: 200 random training examples (the head refitted on their features alone, validation set A): the
   influence scores against the exact leave-one-out refits (Spearman and Pearson correlation);
5. ``timing`` (``--timing``, first seed): scoring the 4,000 (+ 500) from images with an empty feature cache
   (cnn_small: backbone pass + head), the head alone on 4,000 x 1,280 features (a fixed random ReLU projection of
   the real ones), and end to end through MobileNetV2 (torchvision ImageNet weights, 64 px, 1,280 features).

Each seed's features, labels, flips and scores are saved under ``--work/KIND_NOISE/seedK/scores.npz`` for
``benchmarks/peers/instances_cleanlab.py``.

Usage: ``python benchmarks/instances_noisy_mnist.py [--seeds 0,1,2] [--kind random|pair] [--noise 0.2]
[--train-seeds 3] [--timing] [--work /tmp/tltf_instances] [--json benchmarks/instances_noisy_mnist.json]``.
Finished fits are read back, so an interrupted benchmark continues; results of several ``--kind``/``--noise`` runs
are merged into the JSON file (``--resummarise`` recomputes its summaries). The JSON holds: ``random_0.2`` seeds
0-4 (``--timing``), ``random_0.4`` and ``pair_0.2`` seeds 0-1, 3 training seeds each; about 6 minutes per seed
on 2 busy CPU cores.
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

L2_GRID = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
RULES = ("positive", "knee")


def make_data(seed: int, kind: str, noise: float):
    """``(x_train, y_noisy, y_true, x_held, y_held)``: 4,000 training digits with ``noise`` of them flipped."""
    from tltf.data.offline import mnist_5k

    x, y = mnist_5k()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    train, held = np.sort(order[:4000]), order[4000:]  # held: shuffled, so halves A and B are random
    y_true = y[train].astype(np.int64)
    y_noisy = y_true.copy()
    flip = rng.choice(len(train), int(round(noise * len(train))), replace=False)
    if kind == "random":
        y_noisy[flip] = (y_true[flip] + rng.integers(1, 10, len(flip))) % 10
    else:
        y_noisy[flip] = (y_true[flip] + 1) % 10
    return x[train], y_noisy, y_true, x[held], y[held].astype(np.int64)


def write_npz(path: Path, x, y, x_val=None, y_val=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x": x, "y": y, "class_names": np.array([str(d) for d in range(10)])}
    if x_val is not None:
        arrays.update(x_val=x_val, y_val=y_val)
    np.savez(path, **arrays)
    return path


def train(npz: Path, out: Path, seed: int, args) -> dict:
    from tltf.training import FitConfig, fit
    from tltf.training.run_folder import finished_run

    config = FitConfig(data=str(npz), backbone="cnn_small", weights="none", image_size=28, epochs=args.epochs,
                       seed=seed, out=str(out), tensorboard=False)
    start = time.perf_counter()
    metrics = finished_run(out, config) or fit(config, verbose=0)
    return {"val_accuracy": metrics["val_accuracy"], "num_train": metrics["num_train"],
            "seconds": round(time.perf_counter() - start, 1)}


def train_arm(npz: Path, out: Path, seed: int, args, x_b: np.ndarray, y_b: np.ndarray) -> dict:
    """``args.train_seeds`` fits of the same data (training seeds ``seed``, ``seed + 100``, ...): the last epoch's
    accuracy varies by about a point from run to run, as much as the gaps measured, so each arm is a mean."""
    runs = []
    for j in range(args.train_seeds):
        folder = out / f"t{seed + 100 * j}"
        fit = train(npz, folder, seed + 100 * j, args)
        fit["accuracy_b"] = accuracy_on(folder / "model.keras", x_b, y_b)
        runs.append(fit)
    return {"val_accuracy": float(np.mean([r["val_accuracy"] for r in runs])),
            "accuracy_b": float(np.mean([r["accuracy_b"] for r in runs])),
            "num_train": runs[0]["num_train"], "runs": runs}


def accuracy_on(model_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    from tltf.models.loading import load_model

    model = load_model(model_path)
    pixels = np.repeat(x[..., None], 3, axis=-1).astype(np.float32)
    return float((model.predict(pixels, batch_size=256, verbose=0).argmax(axis=1) == y).mean())


def precision_at(scores: np.ndarray, flipped: np.ndarray, k: int) -> float:
    order = np.lexsort((np.arange(len(scores)), -scores))
    return float(flipped[order[:k]].mean()) if k else float("nan")


def features_of(model_path: Path, npz: Path) -> tuple[np.ndarray, np.ndarray]:
    from tltf.data import load_source
    from tltf.models.loading import load_model
    from tltf.strategies.features import split_features

    model = load_model(model_path)
    source = load_source(str(npz))
    return split_features(model, source.train).x, split_features(model, source.val).x


def loo_check(x, y, x_val, y_val, head, l2: float, n: int, seed: int, val_loss: str = "error") -> dict:
    """Influence vs exact leave-one-out on ``n`` random training examples (the head refitted on them alone)."""
    from scipy.stats import pearsonr, spearmanr

    from tltf.instances.influence import fit_head, influence_scores, leave_one_out

    pick = np.random.default_rng(seed).choice(len(y), n, replace=False)
    mean, std = x[pick].mean(axis=0), x[pick].std(axis=0) + 1e-6
    xs, xv = (x[pick] - mean) / std, (x_val - mean) / std
    start = time.perf_counter()
    fitted, _ = fit_head(xs, y[pick], 10, l2, init=head.standardised(mean, std), tol=1e-10)
    approx = influence_scores(fitted, xs, y[pick], xv, y_val, l2, val_loss).scores
    middle = time.perf_counter()
    exact = leave_one_out(fitted, xs, y[pick], xv, y_val, l2, val_loss, tol=1e-10)
    return {"n": n, "l2": l2, "val_loss": val_loss, "spearman": float(spearmanr(approx, exact)[0]),
            "pearson": float(pearsonr(approx, exact)[0]), "influence_seconds": round(middle - start, 2),
            "loo_seconds": round(time.perf_counter() - middle, 1)}


def run_seed(seed: int, args, work: Path) -> dict:
    from tltf.instances import auto_drop_count, score_data
    from tltf.instances.scoring import model_head, score_features
    from tltf.instances.selection import knee_count
    from tltf.models.loading import load_model

    folder = work / f"seed{seed}"
    x, y_noisy, y_true, x_held, y_held = make_data(seed, args.kind, args.noise)
    flipped = y_noisy != y_true
    half = len(y_held) // 2
    noisy_npz = write_npz(folder / "noisy.npz", x, y_noisy, x_held, y_held)
    clean_npz = write_npz(folder / "clean.npz", x[~flipped], y_noisy[~flipped], x_held, y_held)
    val_a = write_npz(folder / "val_a.npz", x_held[:half], y_held[:half])
    result = {"seed": seed, "flipped": int(flipped.sum())}
    fits = {}
    for name, npz in (("noisy", noisy_npz), ("clean", clean_npz)):
        fits[name] = train_arm(npz, folder / name, seed, args, x_held[half:], y_held[half:])
        print(f"seed {seed}: {name} accuracy {fits[name]['val_accuracy']:.4f} (B {fits[name]['accuracy_b']:.4f})",
              flush=True)
    model = folder / "noisy" / f"t{seed}" / "model.keras"

    start = time.perf_counter()
    scores, _ = score_data(model, str(noisy_npz), val=str(val_a), l2=args.l2)
    seconds = time.perf_counter() - start
    k = int(flipped.sum())
    result["precision_at_k"] = precision_at(scores.scores, flipped, k)
    result["positive"] = int((scores.scores > 0).sum())
    result["scoring_seconds"] = round(seconds, 2)
    result["scoring_info"] = scores.info
    counts = {"positive": auto_drop_count(scores.scores, "positive"), "knee": auto_drop_count(scores.scores, "knee"),
              "oracle": k}
    result["drop"] = {rule: {"count": c, "precision": precision_at(scores.scores, flipped, c),
                             "recall": float(flipped[scores.harmful(c)].sum() / k)} for rule, c in counts.items()}
    print(f"seed {seed}: precision@{k} {result['precision_at_k']:.3f}; drop {counts}", flush=True)

    # variants on the same features (read back from the cache): validation set, refit, l2, the plain loss
    x_feat, held_feat = features_of(model, noisy_npz)
    head = model_head(load_model(model))
    variants = {}
    val_sets = {"val_a": (held_feat[:half], y_held[:half]), "val_1000_clean": (held_feat, y_held)}
    for name, (xv, yv) in val_sets.items():
        for loss in ("error", "cross_entropy"):
            s, info = score_features(x_feat, y_noisy, xv, yv, head, l2=args.l2, val_loss=loss)
            variants[f"{name}/{loss}"] = {"precision_at_k": precision_at(s, flipped, k),
                                          "positive": int((s > 0).sum())}
    s, _ = score_features(x_feat, y_noisy, held_feat[:half], y_held[:half], head, l2=args.l2, refit=False)
    variants["val_a/error/no_refit"] = {"precision_at_k": precision_at(s, flipped, k), "positive": int((s > 0).sum())}
    for l2 in L2_GRID:
        s, info = score_features(x_feat, y_noisy, held_feat[:half], y_held[:half], head, l2=l2)
        variants[f"val_a/error/l2={l2:g}"] = {"precision_at_k": precision_at(s, flipped, k),
                                              "positive": int((s > 0).sum()),
                                              "val_loss_refit": info["val_loss_refit"]}
    loss = -np.log(head.probabilities(x_feat)[np.arange(len(y_noisy)), y_noisy] + 1e-12)
    variants["model_loss_ranking"] = {"precision_at_k": precision_at(loss, flipped, k)}
    # no clean data at all: 20 % of the noisy training data held out as the validation set (tltf instances'
    # default for data without a validation split), the other 80 % scored
    from tltf.data.split import stratified_split

    noisy_only = write_npz(folder / "noisy_only.npz", x, y_noisy)
    scored, _ = stratified_split(y_noisy, 0.2, seed)
    k_scored = int(flipped[scored].sum())
    for loss in ("error", "cross_entropy"):
        s, _ = score_data(model, str(noisy_only), val_split=0.2, seed=seed, l2=args.l2, val_loss=loss)
        c = auto_drop_count(s.scores)
        variants[f"val_noisy_holdout/{loss}"] = {
            "precision_at_k": precision_at(s.scores, flipped[scored], k_scored), "positive": int((s.scores > 0).sum()),
            "auto_drop": c, "auto_precision": precision_at(s.scores, flipped[scored], c),
            "auto_recall": float(flipped[scored][s.harmful(c)].sum() / k_scored), "flipped_scored": k_scored,
            "scored": len(scored)}
    result["variants"] = variants
    result["knee_of_positive"] = knee_count(np.sort(scores.scores)[::-1][:result["positive"]])

    for rule in args.rules:
        keep = scores.keep(counts[rule])
        name = f"kept_{rule}_{counts[rule]}"  # the count in the name: a finished run is only reused for the same drop
        npz = write_npz(folder / f"{name}.npz", x[keep], y_noisy[keep], x_held, y_held)
        fits[rule] = train_arm(npz, folder / name, seed, args, x_held[half:], y_held[half:])
        print(f"seed {seed}: drop {rule} ({counts[rule]}): accuracy {fits[rule]['val_accuracy']:.4f} "
              f"(B {fits[rule]['accuracy_b']:.4f})", flush=True)
    gap = fits["clean"]["val_accuracy"] - fits["noisy"]["val_accuracy"]
    gap_b = fits["clean"]["accuracy_b"] - fits["noisy"]["accuracy_b"]
    for rule in args.rules:
        f = fits[rule]
        f["recovered"] = (f["val_accuracy"] - fits["noisy"]["val_accuracy"]) / gap if gap > 0 else None
        f["recovered_b"] = (f["accuracy_b"] - fits["noisy"]["accuracy_b"]) / gap_b if gap_b > 0 else None
    result["fits"] = fits

    if args.loo:
        result["loo"] = loo_check(x_feat, y_noisy, held_feat[:half], y_held[:half], head, args.l2, args.loo, seed)
        result["loo_cross_entropy_l2_0.01"] = loo_check(x_feat, y_noisy, held_feat[:half], y_held[:half], head,
                                                         0.01, args.loo, seed, "cross_entropy")
        print(f"seed {seed}: LOO on {args.loo}: spearman {result['loo']['spearman']:.3f} "
              f"pearson {result['loo']['pearson']:.3f}", flush=True)
    np.savez(folder / "scores.npz", x_train=x_feat, y_noisy=y_noisy, y_true=y_true, x_val=held_feat[:half],
             y_val=y_held[:half], scores=scores.scores, auto_drop=counts["positive"], l2=args.l2)
    return result


def timing(work: Path, seed: int, l2: float) -> dict:
    """From images, empty feature cache; then the head alone at MobileNetV2's width (1,280 features)."""
    from tltf.instances import score_data
    from tltf.instances.scoring import model_head, score_features
    from tltf.models.loading import load_model

    folder = work / f"seed{seed}"
    model = folder / "noisy" / f"t{seed}" / "model.keras"
    start = time.perf_counter()
    scores, _ = score_data(model, str(folder / "noisy.npz"), val=str(folder / "val_a.npz"), l2=l2, cache=False)
    out = {"images_4000_cnn_small": {"seconds": round(time.perf_counter() - start, 2),
                                     "feature_seconds": scores.info["feature_seconds"],
                                     "head_seconds": scores.info["head_seconds"]}}
    saved = np.load(folder / "scores.npz")
    rng = np.random.default_rng(0)
    projection = rng.normal(0, 1 / np.sqrt(saved["x_train"].shape[1]), (saved["x_train"].shape[1], 1280))
    wide, wide_val = (np.maximum(saved[key] @ projection, 0) for key in ("x_train", "x_val"))
    head = model_head(load_model(model))
    from tltf.instances.influence import SoftmaxHead

    wide_head = SoftmaxHead(np.zeros((1280, 10)), head.bias)  # a head not fitted to these features: refit from 0
    start = time.perf_counter()
    s, info = score_features(wide, saved["y_noisy"], wide_val, saved["y_val"], wide_head, l2=l2)
    flipped = saved["y_noisy"] != saved["y_true"]
    out["head_4000x1280"] = {"seconds": round(time.perf_counter() - start, 2),
                             "newton_steps": info["refit_newton_steps"], "products": info["refit_products"],
                             "cg_iterations": info["cg_iterations"],
                             "precision_at_k": precision_at(s, flipped, int(flipped.sum()))}
    out["images_4000_mobilenet_v2"] = mobilenet_timing(folder, l2)
    return out


def mobilenet_timing(folder: Path, l2: float) -> dict:
    """End to end at MobileNetV2's width: the 4,000 digits (and validation set A) at 64 px through MobileNetV2 with
    the torchvision ImageNet weights (cached offline), empty feature cache, its untrained head refitted."""
    from tltf.data import load_source
    from tltf.errors import TltfError
    from tltf.instances import score_instances
    from tltf.models.classifier import build_classifier

    try:
        model = build_classifier("mobilenet_v2", [str(d) for d in range(10)], 64, "torchvision:mobilenet_v2")
    except TltfError as e:  # the weights could not be fetched: no figure rather than a failed benchmark
        return {"skipped": str(e)}
    source, val = load_source(str(folder / "noisy.npz")), load_source(str(folder / "val_a.npz"))
    start = time.perf_counter()
    scores = score_instances(model, source.train, val.train, source.class_names, l2=l2, cache=False)
    saved = np.load(folder / "scores.npz")
    flipped = saved["y_noisy"] != saved["y_true"]
    return {"seconds": round(time.perf_counter() - start, 2), "feature_seconds": scores.info["feature_seconds"],
            "head_seconds": scores.info["head_seconds"], "num_features": scores.info["num_features"],
            "precision_at_k": precision_at(scores.scores, flipped, int(flipped.sum()))}


def recovered(fits: list[dict], rule: str, key: str) -> float | None:
    """Share of the noisy -> clean gap that dropping by ``rule`` closes, over the mean accuracies of all seeds (a
    ratio per seed is meaningless where a seed's gap is a fraction of a point)."""
    noisy, clean, dropped = (float(np.mean([f[name][key] for f in fits])) for name in ("noisy", "clean", rule))
    return round((dropped - noisy) / (clean - noisy), 3) if clean > noisy else None


def summarise(runs: list[dict], rules) -> dict:
    def mean(values):
        values = [v for v in values if v is not None]
        return round(float(np.mean(values)), 4) if values else None

    summary = {"precision_at_k": mean([r["precision_at_k"] for r in runs]),
               "precision_at_k_per_seed": [round(r["precision_at_k"], 4) for r in runs],
               "accuracy": {name: mean([r["fits"][name]["val_accuracy"] for r in runs])
                            for name in ("noisy", "clean", *rules)},
               "accuracy_b": {name: mean([r["fits"][name]["accuracy_b"] for r in runs])
                              for name in ("noisy", "clean", *rules)},
               "recovered": {rule: recovered([r["fits"] for r in runs], rule, "val_accuracy") for rule in rules},
               "recovered_b": {rule: recovered([r["fits"] for r in runs], rule, "accuracy_b") for rule in rules},
               "drop": {rule: {key: mean([r["drop"][rule][key] for r in runs]) for key in ("count", "precision",
                                                                                         "recall")}
                        for rule in ("positive", "knee", "oracle")}}
    summary["variants_precision_at_k"] = {name: mean([r["variants"][name]["precision_at_k"] for r in runs])
                                          for name in runs[0]["variants"]}
    noisy = [r["variants"]["val_noisy_holdout/error"] for r in runs]
    summary["val_noisy_holdout_auto"] = {key: mean([v[key] for v in noisy]) for key in ("auto_drop", "auto_precision",
                                                                                      "auto_recall")}
    if all("loo" in r for r in runs):
        summary["loo_spearman"] = mean([r["loo"]["spearman"] for r in runs])
        summary["loo_pearson"] = mean([r["loo"]["pearson"] for r in runs])
    return summary


def main() -> None:
    from tltf.instances import DEFAULT_L2

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--kind", choices=("random", "pair"), default="random")
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--l2", type=float, default=DEFAULT_L2)
    parser.add_argument("--rules", default=",".join(RULES), help="drop rules to train again with: positive, knee, "
                        "oracle")
    parser.add_argument("--train-seeds", type=int, default=3, help="fits per arm (their accuracies are averaged)")
    parser.add_argument("--loo", type=int, default=200, help="examples for the leave-one-out check (0: none)")
    parser.add_argument("--timing", action="store_true", help="also time scoring from images, uncached")
    parser.add_argument("--work", default="/tmp/tltf_instances")
    parser.add_argument("--json", default="benchmarks/instances_noisy_mnist.json")
    parser.add_argument("--resummarise", action="store_true", help="recompute the summaries of --json, run nothing")
    args = parser.parse_args()
    if args.resummarise:
        path = Path(args.json)
        data = json.loads(path.read_text())
        for entry in data["results"].values():
            rules = [r for r in RULES + ("oracle",) if r in entry["runs"][0]["fits"]]
            entry["summary"] = summarise(entry["runs"], rules)
        path.write_text(json.dumps(data, indent=1) + "\n")
        return
    args.rules = [r for r in args.rules.split(",") if r]
    label = f"{args.kind}_{args.noise:g}"
    work = Path(args.work) / label
    runs = [run_seed(int(s), args, work) for s in args.seeds.split(",")]
    entry = {"settings": {"kind": args.kind, "noise": args.noise, "epochs": args.epochs, "l2": args.l2,
                          "train_seeds": args.train_seeds,
                          "seeds": [r["seed"] for r in runs], "backbone": "cnn_small", "image_size": 28,
                          "train": 4000, "held_out": 1000, "val_a": 500},
             "summary": summarise(runs, args.rules), "runs": runs}
    if args.timing:
        entry["timing"] = timing(work, runs[0]["seed"], args.l2)
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("note", __doc__.split("\n\n")[0])
    data.setdefault("results", {})[label] = entry
    path.write_text(json.dumps(data, indent=1) + "\n")
    print(json.dumps(entry["summary"], indent=1))


if __name__ == "__main__":
    main()
