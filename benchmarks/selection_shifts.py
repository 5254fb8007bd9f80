"""Label-free method selection across domain shifts: which criterion, and which rule, picks a good method.

Trains once, scores offline. For each pair of domains, every adaptation method (none = source-only, dann, mmd,
coral; ``cnn_small`` from scratch, 28 px, ``train_dann``'s defaults) runs each seed; the run's features and class
probabilities of the source training images (a sample), the source validation split and the target images are
saved (``WORK/runs/PAIR/METHOD/seedK.npz``, with the true target accuracy). Scoring then needs no training: every
criterion of :mod:`tltf.adapt.selection` (and variants) is computed from the stored arrays, its Spearman rank
correlation with the true target accuracy over the pair's runs is measured, and each candidate selection rule is
replayed on the per-method means, as ``tltf compare --adapt`` would see them.

Pairs (source labelled -> target unlabelled; target labels only score):

- ``mnist->uci_raw``: MNIST (5,000) -> UCI 8x8 digits upsampled to fill the 28x28 frame.
- ``mnist->uci_framed``: MNIST -> UCI digits in MNIST's 20x20-in-28x28 framing (:mod:`tltf.data.digits`).
- ``mnist->mnist_inverted``: 2,000 MNIST digits -> 2,000 other MNIST digits colour-inverted (black on white).
- ``fonts->mnist@10``: the same pair trained 10 epochs instead of 5 -- the regime of issue 31's report, where every
  adapting method beat source-only (here by 1.2-8.5 points).
- ``fonts->mnist``: 3,000 digits rendered from the machine's fonts (:mod:`tltf.data.rendered_digits`) -> 2,000
  MNIST digits.

(The MNIST subsets are drawn by a fixed permutation: the offline wheel's 5,000 MNIST digits are sorted by class.)

    python benchmarks/selection_shifts.py train --epochs 5 --seeds 0,1     # ~45 min on 2 (shared) cores
    python benchmarks/selection_shifts.py score                            # ~1 min; writes the JSON

Result (the JSON; the table is in :mod:`tltf.adapt.selection`'s docstring): the default rule (source-only out when
its features separate the domains; mean rank of DEV (when not degenerate), domain separability and target entropy)
meets issue 31's bar on all five pairs, mean 0.6 and worst 1.9 points below the best method: MMD, the best, on both
UCI pairs and on fonts -> MNIST @10 (where the first rule, DEV + entropy, chose source-only 8.5 points below);
source-only, 1.9 below CORAL, on fonts -> MNIST at 5 epochs where no method helped. The paper's DEV alone picked
source-only on both UCI pairs (6.7 and 10.4 points below MMD): its weights were degenerate (ESS < 1 % of n) for
every model whose features separate the domains.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

PAIRS = ("mnist->uci_raw", "mnist->uci_framed", "mnist->mnist_inverted", "fonts->mnist", "fonts->mnist@10")
METHODS = ("none", "dann", "mmd", "coral")
LIMIT = {"source_train": 1500, "target": 2000}


def pair_data(name: str):
    """``((xs, ys), (xt, yt))`` raw grey pixels 0..255, ``(N, 28, 28)``; ``NAME@EPOCHS`` is the same data."""
    name = name.split("@")[0]
    from tltf.data import offline
    from tltf.data.digits import uci_to_mnist_frame

    xm, ym = offline.mnist_5k()
    order = np.random.default_rng(12345).permutation(len(ym))  # the wheel's MNIST is sorted by class
    xm, ym = np.asarray(xm, np.float32)[order], np.asarray(ym, np.int64)[order]
    if name in ("mnist->uci_raw", "mnist->uci_framed"):
        xu, yu = offline.uci_digits()
        xu = uci_to_mnist_frame(xu, 28, 28 if name.endswith("raw") else 20)
        return (xm, ym), (xu, np.asarray(yu, np.int64))
    if name == "mnist->mnist_inverted":
        return (xm[:2000], ym[:2000]), (255.0 - xm[2000:4000], ym[2000:4000])
    if name == "fonts->mnist":
        from tltf.data.rendered_digits import render_digits

        xf, yf = render_digits(per_class=300, seed=0)
        return (xf.astype(np.float32), yf), (xm[:2000], ym[:2000])
    raise SystemExit(f"unknown pair {name}")


def _outputs(model, x, y, limit):
    import tensorflow as tf

    from tltf.adapt.selection import _outputs as outputs
    from tltf.data.digits import to_rgb

    ds = tf.data.Dataset.from_tensor_slices((to_rgb(x[:limit]), y[:limit])).batch(256)
    return outputs(model, ds, limit)


def train(pairs, seeds, epochs, work: Path) -> None:
    from tltf.adapt import train_dann
    from tltf.adapt.dann import _split_val
    from tltf.data.digits import to_rgb

    default_epochs = epochs
    for pair in pairs:
        (xs, ys), (xt, yt) = pair_data(pair)
        epochs = int(pair.split("@")[1]) if "@" in pair else default_epochs  # PAIR@EPOCHS: its own budget
        for seed in seeds:
            (xtr, ytr), (xval, yval) = _split_val((xs, ys), 0.1, seed)
            for method in METHODS:
                path = work / "runs" / pair.replace("->", "_to_") / method / f"seed{seed}.npz"
                if path.exists():
                    continue
                start = time.perf_counter()
                r = train_dann((to_rgb(xs), ys), to_rgb(xt), target_eval=(to_rgb(xt), yt), backbone="cnn_small",
                               epochs=epochs, batch_size=64, seed=seed,
                               mode="source_only" if method == "none" else method)
                model = r.classifier
                order = np.random.default_rng(seed).permutation(len(xtr))[:LIMIT["source_train"]]
                sf, sp, sl = _outputs(model, xtr[order], ytr[order], LIMIT["source_train"])
                vf, vp, vl = _outputs(model, xval, yval, len(xval))
                tf_, tp, tl = _outputs(model, xt, yt, LIMIT["target"])
                path.parent.mkdir(parents=True, exist_ok=True)
                meta = {"pair": pair, "method": method, "seed": seed, "epochs": epochs,
                        "target_accuracy": float(r.metrics["target_accuracy"]),
                        "source_val_accuracy": float(r.metrics["source_val_accuracy"]),
                        "domain_accuracy": float(r.metrics.get("domain_accuracy") or np.nan),
                        "seconds": time.perf_counter() - start}
                tmp = path.with_suffix(".tmp.npz")
                np.savez_compressed(tmp, source_features=sf, source_probs=sp, source_labels=sl,
                                    val_features=vf, val_probs=vp, val_labels=vl, target_features=tf_,
                                    target_probs=tp, target_labels=tl, meta=json.dumps(meta))
                tmp.replace(path)
                print(f"{pair} {method} seed {seed}: target {meta['target_accuracy']:.3f} "
                      f"src-val {meta['source_val_accuracy']:.3f} {meta['seconds']:.0f}s", flush=True)


# --- scoring (no training) -------------------------------------------------------------------------------------

def dev_clipped(source_features, target_features, val_features, losses, seed):
    """tltf's DEV before issue 31: C = 0.01, weights clipped at their 95th percentile and divided by their mean
    (which makes the control variate vanish: mean(w) = 1)."""
    from tltf.adapt.selection import density_ratios, effective_sample_size

    w = density_ratios(source_features, target_features, val_features, seed, c=0.01)
    w = np.minimum(w, np.quantile(w, 0.95))
    w = w / np.mean(w)
    return {"risk": float(np.mean(w * losses)), "ess_fraction": effective_sample_size(w) / len(w)}


def run_criteria(path: Path) -> dict:
    """Every criterion (and variant) of one stored run; ``higher`` says which way is better."""
    from tltf.adapt import selection as sel

    z = np.load(path)
    meta = json.loads(str(z["meta"]))
    seed = meta["seed"]
    picked = z["val_probs"][np.arange(len(z["val_labels"])), z["val_labels"].astype(int)]
    losses = -np.log(np.clip(picked, 1e-12, 1.0))
    sf, tf_, vf = z["source_features"], z["target_features"], z["val_features"]
    lib = sel.dev(sf, tf_, vf, losses, seed)  # tltf's defaults
    paper = sel.dev(sf, tf_, vf, losses, seed, c=1.0, clip=None)
    strong = sel.dev(sf, tf_, vf, losses, seed, c=0.01, clip=None)
    old = dev_clipped(sf, tf_, vf, losses, seed)
    return {**meta,
            "dev_risk": lib["risk"], "dev_ess": lib["ess_fraction"], "dev_mean_weight": lib["mean_weight"],
            "dev_paper": paper["risk"], "dev_paper_ess": paper["ess_fraction"], "dev_paper_eta": paper["eta"],
            "dev_paper_mean_weight": paper["mean_weight"],
            "dev_c001": strong["risk"], "dev_c001_ess": strong["ess_fraction"],
            "dev_c001_mean_weight": strong["mean_weight"],
            "dev_clipped": old["risk"], "dev_clipped_ess": old["ess_fraction"], "dev_clipped_mean_weight": 1.0,
            "snd": sel.snd(z["target_probs"]), "target_entropy": sel.entropy(z["target_probs"]),
            "source_val_loss": float(np.mean(losses)),
            "domain_separability": sel.domain_separability(sf, tf_, seed)}


#: criterion -> higher is better (the reference ``source_val_accuracy`` needs no target images at all)
SCORED = {"dev_risk": False, "dev_paper": False, "dev_c001": False, "dev_clipped": False, "snd": True,
          "target_entropy": False,
          "domain_separability": False, "source_val_accuracy": True, "source_val_loss": False}


def spearman(a, b) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def method_rows(runs: list[dict]) -> list[dict]:
    """Per-method means, shaped like ``compare.json``'s summary rows (``{criterion}_mean``)."""
    rows = []
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        row = {"strategy": method, "baseline": method == "none", "seeds": len(mine)}
        for key in ("target_accuracy", *SCORED, "dev_ess", "dev_mean_weight", "dev_paper_ess", "dev_paper_mean_weight",
                    "dev_c001_ess", "dev_c001_mean_weight", "dev_clipped_ess", "dev_clipped_mean_weight"):
            row[f"{key}_mean"] = float(np.mean([r[key] for r in mine]))
        rows.append(row)
    return rows


#: DEV variant -> (the risk ranked by, the weights whose ESS and mean flag degeneracy)
VARIANTS = {"dev_risk": ("dev_risk", "dev"), "dev_paper": ("dev_paper", "dev_paper"),
            "dev_c001": ("dev_c001", "dev_c001"), "dev_clipped": ("dev_clipped", "dev_clipped"),
            "dev_clipped/flag_paper": ("dev_clipped", "dev_paper")}
VARIANT_DOC = {
    "dev_risk": ("tltf's DEV after issue 31: C=0.01, risk from the weights clipped at q95 and divided by their mean, "
                 "degeneracy judged on the unclipped weights' ESS and mean"),
    "dev_paper": "You et al.: C=1 on standardised features, n_s/n_t prior, control variate, unclipped",
    "dev_c001": "the paper's estimator with C=0.01",
    "dev_clipped": ("tltf before issue 31 (dev_risk's risk), with the ESS of the clipped weights (never below "
                    "~0.3, so never flagged)"),
    "dev_clipped/flag_paper": "dev_clipped's risk, degeneracy judged on the paper's (C=1, unclipped) weights"}


def as_variant(rows: list[dict], variant: str) -> list[dict]:
    """The rows with DEV (risk, ESS, mean weight) taken from ``variant``."""
    risk, flag = VARIANTS[variant]
    return [{**row, "dev_risk_mean": row[f"{risk}_mean"], "dev_ess_mean": row[f"{flag}_ess_mean"],
             "dev_mean_weight_mean": row[f"{flag}_mean_weight_mean"]} for row in rows]


def verdict(selected, acc: dict) -> dict:
    """Issue 31's bar: within 1 point of the best method, or at least not more than 1 point below source-only."""
    best = max(acc.values())
    got = acc.get(selected, float("nan"))
    return {"selected": selected, "accuracy": got, "below_best": best - got, "below_source_only": acc["none"] - got,
            "holds": bool(best - got <= 0.01 or acc["none"] - got <= 0.01)}


def rules(pairs: dict) -> list[dict]:
    """Every candidate rule replayed on every pair's per-method means; sorted by pairs held, then mean regret."""
    from itertools import product

    from tltf.adapt.selection import choose

    found = []
    for variant in VARIANTS:
        for name in ("dev_risk", "snd", "target_entropy", "domain_separability"):
            if name != "dev_risk" and variant != "dev_risk":
                continue
            label = name if name != "dev_risk" else f"{variant} alone"
            found.append({"rule": label, "params": {"variant": variant, "rule": name},
                          "pairs": {p: verdict(choose(as_variant(r["methods"], variant), name)["selected"],
                                               r["accuracy"]) for p, r in pairs.items()}})
        grid = product((0.05, 0.1, 0.2, 0.3), (0.0, 0.1, 0.3), (None, 0.9, 0.95, 0.98),
                       (("dev_risk", "snd"), ("dev_risk", "snd", "target_entropy"), ("dev_risk",),
                        ("dev_risk", "domain_separability"), ("dev_risk", "target_entropy"),
                        ("dev_risk", "domain_separability", "target_entropy")))
        for ess_min, mw_min, sep, members in grid:
            params = {"variant": variant, "ess_min": ess_min, "mean_weight_min": mw_min, "separable": sep,
                      "members": list(members)}
            per = {}
            for p, r in pairs.items():
                rows = as_variant(r["methods"], variant)
                kw = dict(ess_min=ess_min, mean_weight_min=mw_min, separable=sep)
                if members == ("dev_risk",):  # fallback order: DEV unless degenerate, then SND
                    pick = choose(rows, "auto", members=("dev_risk",), **kw)["selected"] or \
                        choose(rows, "auto", members=("snd",), **kw)["selected"]
                else:
                    pick = choose(rows, "auto", members=members, **kw)["selected"]
                per[p] = verdict(pick, r["accuracy"])
            label = (f"{variant}: {'+'.join(members) if len(members) > 1 else 'dev then snd'} rank; degenerate ESS<"
                     f"{ess_min} or mean w<{mw_min}; drop source-only if separability>={sep}")
            found.append({"rule": label, "params": params, "pairs": per})
    for rule in found:
        rule["held"] = sum(v["holds"] for v in rule["pairs"].values())
        rule["mean_below_best"] = float(np.mean([v["below_best"] for v in rule["pairs"].values()]))
        rule["worst_below_best"] = float(np.max([v["below_best"] for v in rule["pairs"].values()]))
    return sorted(found, key=lambda r: (-r["held"], r["mean_below_best"]))


CACHE_VERSION = 3
NOTE = ("cnn_small from scratch, 28 px, 5 epochs (PAIR@10: 10), batch 64, train_dann defaults (Adam 1e-3, weight averaging "
        "auto), seeds 0-1, none/dann/mmd/coral per pair; trained once (40 runs, 43-200 s each on 2 CPU cores "
        "shared with 5 other sessions, load average ~10; two training processes for the last ~15 runs), scored "
        "offline from the stored features. 'holds': issue 31's bar (within 1 point of the best method, or at most "
        "1 point below source-only).")  # of run_criteria's output (WORK/criteria.json is recomputed when it changes)


def score(pairs, work: Path, out: Path) -> None:
    cache = work / "criteria.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    runs = []
    for path in sorted((work / "runs").rglob("seed*.npz")):
        key = str(path.relative_to(work))
        stamp = [path.stat().st_mtime, CACHE_VERSION]
        if key not in known or known[key].get("stamp") != stamp:
            known[key] = {**run_criteria(path), "stamp": stamp}
        runs.append(known[key])
    cache.write_text(json.dumps(known, indent=1))
    report = {"note": NOTE, "variants": VARIANT_DOC, "pairs": {},
              "runs": [{k: v for k, v in r.items() if k != "stamp"} for r in runs]}
    for pair in pairs:
        mine = [r for r in runs if r["pair"] == pair]
        if not mine:
            continue
        rows = method_rows(mine)
        acc = {row["strategy"]: row["target_accuracy_mean"] for row in rows}
        rho = {name: spearman([r[name] if higher else -r[name] for r in mine], [r["target_accuracy"] for r in mine])
               for name, higher in SCORED.items()}
        picks = {name: (max if higher else min)(rows, key=lambda row: row[f"{name}_mean"])["strategy"]
                 for name, higher in SCORED.items()}
        report["pairs"][pair] = {"runs": len(mine), "methods": rows, "spearman": rho, "picks": picks,
                                 "best": max(acc, key=acc.get), "accuracy": acc}
    from tltf.adapt import selection as sel

    report["default_rule"] = {
        "settings": {"rule": sel.DEFAULT_RULE, "members": list(sel.AUTO), "ess_min": sel.ESS_MIN,
                     "mean_weight_min": sel.MEAN_WEIGHT_MIN, "separable": sel.SEPARABLE, "domain_c": sel.DOMAIN_C,
                     "clip_quantile": sel.CLIP_QUANTILE},
        "pairs": {p: {**verdict((found := sel.choose(r["methods"]))["selected"], r["accuracy"]),
                      "reason": found["reason"], "picks": found["picks"]} for p, r in report["pairs"].items()}}
    ranked = rules(report["pairs"])
    report["rules_tried"] = len(ranked)
    report["rules"] = ranked[:20] + [r for r in ranked[20:] if "rule" in r["params"]]  # the top and the singles
    out.write_text(json.dumps(report, indent=1) + "\n")
    for pair, r in report["pairs"].items():
        print(f"\n== {pair} ({r['runs']} runs) best {r['best']}")
        for row in r["methods"]:
            print(f"  {row['strategy']:<6} acc {row['target_accuracy_mean']:.3f} dev {row['dev_risk_mean']:.3f} "
                  f"ess {row['dev_ess_mean']:.3f} mw {row['dev_mean_weight_mean']:.3g} "
                  f"paper {row['dev_paper_mean']:.3f} "
                  f"ess {row['dev_paper_ess_mean']:.3f} "
                  f"clip {row['dev_clipped_mean']:.3f} snd {row['snd_mean']:.3f} ent {row['target_entropy_mean']:.3f}"
                  f" sep {row['domain_separability_mean']:.3f}")
        print("  rho " + "  ".join(f"{k} {v:+.2f}" if v is not None else f"{k} -" for k, v in r["spearman"].items()))
        print("  picks " + "  ".join(f"{k}:{v}" for k, v in r["picks"].items()))
    print("\ndefault rule:")
    for pair, v in report["default_rule"]["pairs"].items():
        print(f"  {pair:<22} {v['selected']:<6} {v['accuracy']:.3f}  below best {100 * v['below_best']:+.1f}  "
              f"below source-only {100 * v['below_source_only']:+.1f}  holds {v['holds']}  ({v['reason']})")
    print("\nrules (pairs held / mean and worst points below the best):")
    for rule in report["rules"][:8] + [r for r in report["rules"] if "rule" in r["params"]]:
        print(f"  {rule['held']}/{len(report['pairs'])}  {100 * rule['mean_below_best']:4.1f}  "
              f"{100 * rule['worst_below_best']:4.1f}  {rule['rule']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "score"])
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--work", default="/tmp/tltf_selection_shifts")
    parser.add_argument("--json", default="benchmarks/selection_shifts.json")
    args = parser.parse_args()
    pairs = args.pairs.split(",")
    if args.phase == "train":
        train(pairs, [int(s) for s in args.seeds.split(",")], args.epochs, Path(args.work))
    else:
        score(pairs, Path(args.work), Path(args.json))


if __name__ == "__main__":
    main()
