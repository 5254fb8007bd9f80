"""Judging an adapted model without target labels: the criteria ``tltf compare --adapt`` selects a method by.

Every run with ``--target-data`` records, in ``metrics.json`` under ``unsupervised``:

- ``dev_risk`` (lower is better) and ``dev_paper_risk``: Deep Embedded Validation (You et al., ICML 2019). A
  logistic-regression domain classifier on the model's features (source training images vs target images) gives
  each held-out *source* validation image the density ratio ``w = (n_s / n_t) p(target | x) / p(source | x)``.
  ``dev_paper_risk`` is the paper's estimate: ``mean(w * loss) + eta * (mean(w) - 1)`` with the control variate
  ``eta = -cov(w * loss, w) / var(w)`` (:func:`dev_from_weights`). ``dev_risk`` is the regularised variant tltf
  kept because it ranked better (table below): C = 0.01, the weights clipped at their 95th percentile and divided
  by their mean (the control variate is then 0).
- ``dev_ess`` and ``dev_mean_weight``: the unclipped weights' effective sample size ``(sum w)^2 / sum w^2`` as a
  fraction of n, and their mean (1 in expectation when the ratio is right). DEV is **degenerate** when the ESS is
  below 0.3 of n or the mean below 0.1 (:data:`ESS_MIN`, :data:`MEAN_WEIGHT_MIN`): a handful of images carry the estimate (ESS), or the
  target lies where the source validation images are not (mean weight, e.g. disjoint colour ranges). Measured: the
  unclipped weights' ESS was 0.016-0.092 for every source-only/DANN/CORAL model on MNIST -> UCI (features that
  separate the domains, held-out domain accuracy >= 0.96), 0.23-0.41 on fonts -> MNIST and inverted MNIST, and
  0.75-0.92 for MMD (overlapping features); the paper's C = 1 weights were worse (ESS 0.003-0.08 except MMD).
- ``domain_separability``: the held-out (2-fold) accuracy of that domain classifier, 0.5 = overlapping domains.
- ``snd`` (higher is better): Soft Neighbourhood Density (Saito et al., ICCV 2021), the mean entropy of each target
  image's softmax-normalised similarity (temperature 0.05) to the other target images, in the space of the model's
  L2-normalised class probabilities. Target images alone.
- ``target_entropy`` (lower means more confident): the mean entropy of the target predictions.

The default rule (``--criterion auto``, :func:`choose`): when the source-only model's features separate the domains
(``domain_separability`` >= 0.9, :data:`SEPARABLE`: a large shift) source-only is not a candidate; the others are
ranked by ``dev_risk``, ``domain_separability`` (lower: the model's features align the domains) and
``target_entropy``, and the lowest mean rank wins (ties to the first criterion used), where DEV is left out when its
weights are degenerate for any method (ESS below :data:`ESS_MIN` = 0.3 of n, or mean weight below 0.1).
``compare.json`` says why (``selection.reason``), gives every criterion's values, pick, and DEV's ESS and
degeneracy flag, and warns when the criteria pick different winners.

Measured (``benchmarks/selection_shifts.py``: ``cnn_small`` from scratch, 28 px, 5 epochs (``@10``: 10 epochs, the
regime of issue 31's report), none/dann/mmd/coral x 2 seeds per pair, trained once and scored offline; 2 shared
CPU cores): Spearman's rho of each criterion with the true target accuracy over the 8 runs of a pair, and what the
rule selected (target accuracy, points below the best method):

=======================  =====  =====  =====  =======  ========  ==========  ===============================
pair                     dev    paper  snd    entropy  separab.  source val  rule: pick, acc, below best
=======================  =====  =====  =====  =======  ========  ==========  ===============================
MNIST -> UCI raw         +0.60  +0.00  -0.07  +0.55    +0.76     +0.73       mmd 0.703, 0.0
MNIST -> UCI framed      +0.69  +0.02  -0.33  +0.31    +0.29     +0.30       mmd 0.885, 0.0
MNIST -> inverted MNIST  -0.29  -0.38  +0.21  +0.10    -0.33     -0.36       mmd 0.069, 1.3 (chance; = source-only)
fonts -> MNIST           +0.68  +0.73  -0.04  -0.24    +0.07     +0.76       none 0.600, 1.9 (= source-only)
fonts -> MNIST @10       -0.33  -0.40  -0.83  -0.86    +0.60     +0.41       mmd 0.687, 0.0 (source-only 0.602)
=======================  =====  =====  =====  =======  ========  ==========  ===============================

(dev: ``dev_risk``; paper: ``dev_paper_risk``; separab.: lower ``domain_separability`` ranked better; source val:
the source validation accuracy, for reference.) On every pair the selected method is within 1 point of the best or
no worse than source-only; mean 0.6 and worst 1.9 points below the best. The rule of the first measurement (DEV and
entropy, ESS below 0.1) chose source-only on fonts -> MNIST @10, 8.5 points below MMD -- issue 31's failure again
(every method beat source-only by 1.2-8.5 points; source-only's separability 0.874, under the 0.9 cut, so it stayed
a candidate, and its confident predictions won the entropy); adding ``domain_separability`` to the ranks and
judging DEV degenerate below 0.3 of n fixed it without losing the other pairs (the best of 486 rules replayed; the
separability cut 0.9-0.98 or none and mean-weight cut 0-0.1 gave the same picks). Alone, criteria did worse:
separability 0.7 / 2.1 (mean / worst points below the best), entropy 2.1 / 8.5, DEV 2.3 / 8.5, the paper's DEV
5.1 / 10.4, SND 5.7 / 10.4. The paper's DEV alone picked source-only on both UCI pairs (6.7 and 10.4 points below
MMD): its weights were degenerate there. Note that at ESS 0.3 DEV's weights were degenerate on all five pairs (only
MMD's features overlap enough: ESS 0.75-0.97), so the rule ranked by separability and entropy alone; DEV counts
where its weights are healthy. Inverted MNIST stayed at chance for every method (5 epochs from scratch). 5 pairs x 2
seeds are few: the thresholds are the measured ones, not tuned optima. ``target_entropy`` rewards confidence, right
or wrong, and ``domain_separability`` rewards features that merge the domains, collapsed or not; neither is used
alone.

:func:`unsupervised_scores` computes them from a classifier and its data.
"""

from __future__ import annotations

import numpy as np

#: the criteria ``tltf compare --adapt --criterion`` can select by alone, and whether higher values are better
CRITERIA = {"snd": True, "dev_risk": False, "target_entropy": False, "domain_separability": False}
DOMAIN_C = 0.01  # the domain classifier's inverse regularisation (DEV, on standardised features)
CLIP_QUANTILE = 0.95  # DEV's risk: the weights clipped at this quantile and divided by their mean (None: the paper's)
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
        val_losses: np.ndarray, seed: int = 0, c: float = DOMAIN_C, clip: float | None = CLIP_QUANTILE) -> dict:
    """DEV from features: ``risk`` (with ``clip``: the validation losses weighted by the density ratios clipped at
    their ``clip`` quantile and divided by their mean, where the control variate is 0; with ``clip=None`` the paper's
    control-variate estimate), ``paper_risk`` (always the paper's), and of the unclipped weights ``eta``, ``ess``,
    ``ess_fraction`` and ``mean_weight`` (:func:`dev_from_weights`)."""
    weights = density_ratios(source_features, target_features, val_features, seed, c)
    found = dev_from_weights(weights, val_losses)
    found["paper_risk"] = found["risk"]
    if clip is not None:
        clipped = np.minimum(weights, np.quantile(weights, clip))
        clipped = clipped / np.mean(clipped)
        found["risk"] = float(np.mean(clipped * np.asarray(val_losses, np.float64)))
    return found


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
    scores = {"snd": snd(target_probs), "target_entropy": entropy(target_probs), "dev_risk": None,
              "dev_paper_risk": None, "dev_ess": None, "dev_mean_weight": None, "domain_separability": None,
              "images": {"target": int(len(target_probs))}}
    if source_val is not None:
        train_features, _, _ = _outputs(model, source_train, limit)
        val_features, val_probs, val_labels = _outputs(model, source_val, limit)
        picked = val_probs[np.arange(len(val_labels)), val_labels.astype(int)]
        losses = -np.log(np.clip(picked, 1e-12, 1.0))
        found = dev(train_features, target_features, val_features, losses, seed)
        scores.update(dev_risk=found["risk"], dev_paper_risk=found["paper_risk"], dev_ess=found["ess_fraction"],
                      dev_mean_weight=found["mean_weight"],
                      domain_separability=domain_separability(train_features, target_features, seed))
        scores["images"].update(source_train=int(len(train_features)), source_val=int(len(val_features)))
    return scores


# --- choosing a method from the per-method means ----------------------------------------------------------------

ESS_MIN = 0.3  # DEV's weights are degenerate when their effective sample size is below this fraction of n ...
MEAN_WEIGHT_MIN = 0.1  # ... or when they average below this (they should average 1): the target lies elsewhere
SEPARABLE = 0.9  # the shift is large when the source-only features tell the domains apart this well (held out)
AUTO = ("dev_risk", "domain_separability", "target_entropy")  # what "auto" ranks by (DEV dropped when degenerate)
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
