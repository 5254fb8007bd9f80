"""Judging an adapted model without target labels: the criteria ``tltf compare --adapt`` selects a method by.

Every run with ``--target-data`` records, in ``metrics.json`` under ``unsupervised``:

- ``snd`` (higher is better): Soft Neighbourhood Density (Saito et al., ICCV 2021): the mean
  entropy of each target image's softmax-normalised similarity (temperature 0.05) to the other target images, in the
  space of the model's L2-normalised class probabilities. Target predictions that form dense clusters score high.
  Target images alone.
- ``dev_risk`` (lower is better; the default criterion): Deep Embedded Validation (You et al., ICML 2019). A
  logistic-regression domain classifier on the model's features (source training images vs target images) gives each
  held-out *source* image a density ratio ``w = p(target | x) / p(source | x)``; the risk is the importance-weighted
  validation loss ``mean(w * loss)`` with the control variate ``eta * (mean(w) - 1)``, ``eta = -cov(w * loss, w) /
  var(w)``. It estimates the *target* loss from labelled source images (it needs a source validation split). The
  paper's plain version was useless here: the domains are nearly separable in the features, the weights reached
  ~10^3 and a handful of images decided the risk. tltf regularises the domain classifier (C = 0.01), divides the
  weights by their mean and clips them at their 95th percentile.

Measured on MNIST -> UCI digits (``benchmarks/adapt_digits.py``), rank correlation with the true target
accuracy over the runs of each variant, and whether the pick was the best method:

==========================================  ==============  ==============  ================
variant (methods x seeds)                    ``dev_risk``    ``snd``         ``target_entropy``
==========================================  ==============  ==============  ================
raw, cnn_small, 20 epochs (4 x 5)            +0.76, best     +0.66, 2nd      +0.68, 2nd
framed, cnn_small, 20 epochs (4 x 3)         +0.78, best     +0.76, 2nd      +0.73, 2nd
raw, cnn_small, 10 epochs (4 x 3)            +0.72, best     +0.57, best     +0.50, 2nd
raw, cnn_small_bn, 10 epochs (4 x 3)         +0.65, best     +0.50, best     +0.69, best
framed, cnn_small, 10 epochs (4 x 3)         +0.26, best     +0.47, best     +0.18, 2nd
==========================================  ==============  ==============  ================

(the paper's unregularised DEV: -0.34; the source validation accuracy: +0.04). ``dev_risk`` is the default: it
picked the best method every time and ranked best on four of five. ``snd`` needs no source validation split (the
fallback when there is none) but rewards confident clusters whether or not they are right: with a target-entropy
term in the loss it picked the worst method (CORAL, 0.788 against MMD's 0.921).
- ``target_entropy`` (lower means more confident): the mean entropy of the target predictions, for reference (it
  rewards over-confident, even collapsed, models and is not used to select).

:func:`unsupervised_scores` computes all three from a classifier and its data.
"""

from __future__ import annotations

import numpy as np

#: the criteria ``tltf compare --adapt --criterion`` can select by alone, and whether higher values are better
CRITERIA = {"snd": True, "dev_risk": False, "target_entropy": False}
DOMAIN_C = 1.0  # the domain classifier's inverse regularisation (DEV, on standardised features)
MAX_IMAGES = 2000  # per set of images scored (source training, source validation, target)


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size of importance weights, ``(sum w)^2 / sum w^2`` (``n`` for equal weights, 1
    when one weight carries everything, 0 when all are 0)."""
    w = np.asarray(weights, np.float64)
    total = float(np.sum(w * w))
    return float(np.sum(w) ** 2 / total) if total > 0 else 0.0


def density_ratios(source_features: np.ndarray, target_features: np.ndarray, val_features: np.ndarray,
                   seed: int = 0, c: float = DOMAIN_C) -> np.ndarray:
    """DEV's importance weights of the validation images, ``w = (n_s / n_t) * p(target | x) / p(source | x)``,
    from a logistic-regression domain classifier (standardised features, inverse regularisation ``c``) trained on
    ``source_features`` (label 0) against ``target_features`` (label 1)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source_features, target_features]).astype(np.float64)
    d = np.concatenate([np.zeros(len(source_features)), np.ones(len(target_features))])
    domain = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))
    domain.fit(x, d)
    p = np.clip(domain.predict_proba(np.asarray(val_features, np.float64))[:, 1], 1e-12, 1 - 1e-12)
    return len(source_features) / len(target_features) * p / (1 - p)


def dev_from_weights(weights: np.ndarray, val_losses: np.ndarray) -> dict:
    """Deep Embedded Validation (You et al., ICML 2019, Algorithm 1) from the weights and per-image losses of the
    source validation images: ``L = w * loss``, ``eta = -cov(L, w) / var(w)``, ``risk = mean(L) + eta * mean(w) -
    eta``; with the weights' effective sample size (``ess``, and ``ess_fraction`` = ess / n)."""
    w = np.asarray(weights, np.float64)
    weighted = w * np.asarray(val_losses, np.float64)
    var = float(np.var(w, ddof=1)) if len(w) > 1 else 0.0
    eta = -float(np.cov(weighted, w)[0, 1]) / var if var > 0 else 0.0
    ess = effective_sample_size(w)
    return {"risk": float(np.mean(weighted) + eta * np.mean(w) - eta), "eta": eta, "mean_weight": float(np.mean(w)),
            "ess": ess, "ess_fraction": ess / len(w) if len(w) else 0.0}


def dev(source_features: np.ndarray, target_features: np.ndarray, val_features: np.ndarray,
        val_losses: np.ndarray, seed: int = 0, c: float = DOMAIN_C) -> dict:
    """DEV's risk and the weights' effective sample size (:func:`dev_from_weights` of :func:`density_ratios`)."""
    return dev_from_weights(density_ratios(source_features, target_features, val_features, seed, c), val_losses)


def dev_risk(source_features: np.ndarray, target_features: np.ndarray, val_features: np.ndarray,
             val_losses: np.ndarray, seed: int = 0) -> float:
    """Deep Embedded Validation's risk alone (see :func:`dev`); features are 2-D arrays, ``val_losses`` the
    per-image loss of the validation images."""
    return dev(source_features, target_features, val_features, val_losses, seed)["risk"]


def domain_separability(source_features: np.ndarray, target_features: np.ndarray, seed: int = 0,
                        c: float = DOMAIN_C) -> float:
    """Held-out accuracy (2-fold, balanced classes) of the logistic domain classifier on the features: 0.5 when
    the domains overlap, 1.0 when the features tell them apart perfectly."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(source_features), len(target_features))
    rng = np.random.default_rng(seed)
    s = np.asarray(source_features, np.float64)[rng.permutation(len(source_features))[:n]]
    t = np.asarray(target_features, np.float64)[rng.permutation(len(target_features))[:n]]
    x, d = np.concatenate([s, t]), np.concatenate([np.zeros(n), np.ones(n)])
    domain = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))
    folds = StratifiedKFold(2, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(domain, x, d, cv=folds)))


def snd(target_probs: np.ndarray, temperature: float = 0.05) -> float:
    """Soft Neighbourhood Density of target class probabilities ``(n, classes)`` (see the module docstring)."""
    p = np.asarray(target_probs, np.float64)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    sim = p @ p.T / temperature
    np.fill_diagonal(sim, -np.inf)
    sim -= sim.max(axis=1, keepdims=True)
    q = np.exp(sim)
    q /= q.sum(axis=1, keepdims=True)
    return float(np.mean(-np.sum(q * np.log(np.maximum(q, 1e-300)), axis=1)))


def entropy(probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, np.float64), 1e-12, 1.0)
    return float(np.mean(-np.sum(p * np.log(p), axis=1)))


def _outputs(model, dataset, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(features, class probabilities, labels or None)`` of up to ``limit`` images of a batched dataset."""
    import keras
    import tensorflow as tf

    from tltf.models.classifier import backbone_layer
    from tltf.runtime.outputs import class_probabilities

    both = keras.Model(model.inputs, [backbone_layer(model).output, model.output])
    forward = tf.function(lambda x: both(x, training=False))
    feats, probs, labels, seen = [], [], [], 0
    for batch in dataset:
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
        f, p = forward(x)
        f = np.asarray(f, np.float32)
        feats.append(f.reshape(len(f), -1) if f.ndim == 2 else f.mean(axis=(1, 2)))
        probs.append(class_probabilities(np.asarray(p)))
        if y is not None:
            labels.append(np.asarray(y))
        seen += len(f)
        if seen >= limit:
            break
    cut = slice(0, limit)
    return (np.concatenate(feats)[cut], np.concatenate(probs)[cut],
            np.concatenate(labels)[cut] if labels else None)


def unsupervised_scores(model, source_train, source_val, target, seed: int = 0, limit: int = MAX_IMAGES) -> dict:
    """``{"dev_risk", "dev_ess", "dev_mean_weight", "snd", "target_entropy", "domain_separability"}`` of a
    classifier (the source ones None without ``source_val``); the arguments are batched datasets (source ones
    labelled). ``dev_ess`` is the effective sample size of DEV's weights as a fraction of the validation images
    (:func:`effective_sample_size`), ``dev_mean_weight`` their mean (1 in expectation when the density ratio is
    right), ``domain_separability`` :func:`domain_separability` of the source training and target features."""
    target_features, target_probs, _ = _outputs(model, target, limit)
    scores = {"snd": snd(target_probs), "target_entropy": entropy(target_probs), "dev_risk": None, "dev_ess": None,
              "dev_mean_weight": None, "domain_separability": None, "images": {"target": int(len(target_probs))}}
    if source_val is not None:
        train_features, _, _ = _outputs(model, source_train, limit)
        val_features, val_probs, val_labels = _outputs(model, source_val, limit)
        picked = val_probs[np.arange(len(val_labels)), val_labels.astype(int)]
        losses = -np.log(np.clip(picked, 1e-12, 1.0))
        found = dev(train_features, target_features, val_features, losses, seed)
        scores.update(dev_risk=found["risk"], dev_ess=found["ess_fraction"], dev_mean_weight=found["mean_weight"],
                      domain_separability=domain_separability(train_features, target_features, seed))
        scores["images"].update(source_train=int(len(train_features)), source_val=int(len(val_features)))
    return scores


# --- choosing a method from the per-method means ----------------------------------------------------------------

ESS_MIN = 0.1  # DEV's weights are degenerate when their effective sample size is below this fraction of n ...
MEAN_WEIGHT_MIN = 0.1  # ... or when they average below this (they should average 1): the target lies elsewhere
SEPARABLE = 0.95  # the shift is large when the source-only features tell the domains apart this well (held out)
AUTO = ("dev_risk", "snd")  # the criteria the "auto" rule ranks by (DEV dropped when degenerate)
RULES = ("auto", *CRITERIA)
DEFAULT_RULE = "auto"


def _value(row: dict, name: str):
    value = row.get(f"{name}_mean")
    return None if value is None or not np.isfinite(value) else float(value)


def criteria_table(summary: list[dict], ess_min: float = ESS_MIN, mean_weight_min: float = MEAN_WEIGHT_MIN) -> dict:
    """Per criterion: ``higher_is_better``, each method's mean ``values``, its ``pick``; for ``dev_risk`` also each
    method's weight ``ess`` (fraction of n) and ``mean_weight``, and ``degenerate`` (some method's ESS below
    ``ess_min`` or mean weight below ``mean_weight_min``) with the ``degenerate_methods``."""
    table = {}
    for name, higher in CRITERIA.items():
        values = {row["strategy"]: _value(row, name) for row in summary}
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            continue
        entry = {"higher_is_better": higher, "values": values,
                 "pick": (max if higher else min)(values, key=values.get)}
        if name == "dev_risk":
            ess = {row["strategy"]: _value(row, "dev_ess") for row in summary if row["strategy"] in values}
            mean_w = {row["strategy"]: _value(row, "dev_mean_weight") for row in summary if row["strategy"] in values}
            low = sorted(k for k in values if (ess.get(k) is not None and ess[k] < ess_min)
                         or (mean_w.get(k) is not None and mean_w[k] < mean_weight_min))
            entry.update(ess=ess, mean_weight=mean_w, ess_min=ess_min, mean_weight_min=mean_weight_min,
                         degenerate=bool(low), degenerate_methods=low)
        table[name] = entry
    return table


def _degenerate_note(entry: dict) -> str:
    return (f"DEV's weights are degenerate for {', '.join(entry['degenerate_methods'])} (effective sample size "
            f"below {entry['ess_min']:.0%} of n" + (f" or mean weight below {entry['mean_weight_min']}"
                                                    if entry["mean_weight_min"] else "") + ")")


def choose(summary: list[dict], rule: str = DEFAULT_RULE, ess_min: float = ESS_MIN,
           mean_weight_min: float = MEAN_WEIGHT_MIN, separable: float | None = SEPARABLE,
           members: tuple = AUTO) -> dict:
    """``{"criterion", "selected", "reason", "criteria", "picks", "disagree"}`` from per-method means (rows of
    ``compare.json``'s summary: ``strategy``, ``baseline`` and ``{criterion}_mean``).

    ``rule`` is one criterion of :data:`CRITERIA` (its best mean wins; ``dev_risk`` without values falls back to
    ``snd``) or ``"auto"``: the ``members`` criteria that are not degenerate rank the methods and the lowest mean
    rank wins (ties to the first member); when the baseline's ``domain_separability`` is at least ``separable``
    (None: never) the baseline is not a candidate. The defaults are the measured ones (module docstring).
    """
    table = criteria_table(summary, ess_min, mean_weight_min)
    picks = {name: entry["pick"] for name, entry in table.items()}
    out = {"criteria": table, "picks": picks, "disagree": len(set(picks.values())) > 1}
    if rule != "auto":
        name = rule if rule in table or rule != "dev_risk" else "snd"
        entry = table.get(name)
        reason = f"best mean {name}" + (" (no dev_risk: no source validation split)" if name != rule else "")
        if entry and entry.get("degenerate"):
            reason += "; warning: " + _degenerate_note(entry)
        return {"criterion": name, "selected": entry["pick"] if entry else None, "reason": reason, **out}
    return {"criterion": "auto", **_auto(summary, table, separable, members), **out}


def _auto(summary: list[dict], table: dict, separable: float | None, members: tuple) -> dict:
    candidates = [row["strategy"] for row in summary]
    notes = []
    base = next((row for row in summary if row.get("baseline")), None)
    sep = _value(base, "domain_separability") if base else None
    if separable is not None and sep is not None and sep >= separable and len(candidates) > 1:
        candidates = [c for c in candidates if c != base["strategy"]]
        notes.append(f"the source-only features separate the domains ({sep:.3f} held-out domain accuracy >= "
                     f"{separable}): a large shift, so an adapting method is chosen")
    used = [name for name in members if name in table and not table[name].get("degenerate")]
    if any(table[name].get("degenerate") for name in members if name in table):
        notes.append(_degenerate_note(table["dev_risk"]) + ", so DEV is left out")
    if not used:
        return {"selected": None, "reason": "; ".join(notes + ["no usable criterion"])}
    ranks = {c: 0.0 for c in candidates}
    for name in used:
        entry = table[name]
        ordered = sorted((c for c in candidates if c in entry["values"]),
                         key=lambda c: -entry["values"][c] if entry["higher_is_better"] else entry["values"][c])
        for c in candidates:
            ranks[c] += ordered.index(c) if c in ordered else len(candidates)
    first = table[used[0]]
    sign = -1 if first["higher_is_better"] else 1
    pick = min(candidates, key=lambda c: (ranks[c], sign * first["values"].get(c, np.inf)))
    how = (f"best mean {used[0]}" if len(used) == 1 else
           f"best mean rank over {' and '.join(used)} (ties to {used[0]})")
    return {"selected": pick, "reason": "; ".join(notes + [how])}
