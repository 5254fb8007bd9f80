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

#: the criterion ``tltf compare --adapt`` selects by, and whether higher values are better
CRITERIA = {"snd": True, "dev_risk": False}
DEFAULT_CRITERION = "dev_risk"  # see the module docstring for the measurements
DOMAIN_C = 0.01  # the domain classifier's inverse regularisation (DEV)
CLIP_QUANTILE = 0.95  # DEV's importance weights are clipped at this quantile
MAX_IMAGES = 2000  # per set of images scored (source training, source validation, target)


def dev_risk(source_features: np.ndarray, target_features: np.ndarray, val_features: np.ndarray,
             val_losses: np.ndarray, seed: int = 0) -> float:
    """Deep Embedded Validation's risk (see the module docstring); features are 2-D arrays, ``val_losses`` the
    per-image loss of the validation images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([source_features, target_features]).astype(np.float64)
    d = np.concatenate([np.zeros(len(source_features)), np.ones(len(target_features))])
    domain = make_pipeline(StandardScaler(), LogisticRegression(C=DOMAIN_C, max_iter=3000, random_state=seed))
    domain.fit(x, d)
    p = np.clip(domain.predict_proba(np.asarray(val_features, np.float64))[:, 1], 1e-6, 1 - 1e-6)
    w = p / (1 - p)
    w = np.minimum(w, np.quantile(w, CLIP_QUANTILE))
    w = w / np.mean(w)
    weighted = w * np.asarray(val_losses, np.float64)
    var = np.var(w, ddof=1) if len(w) > 1 else 0.0
    eta = -np.cov(weighted, w)[0, 1] / var if var > 0 else 0.0
    return float(np.mean(weighted) + eta * np.mean(w) - eta)


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
    """``{"dev_risk", "snd", "target_entropy"}`` of a classifier (``dev_risk`` None without ``source_val``); the
    arguments are batched datasets (source ones labelled)."""
    _, target_probs, _ = target_out = _outputs(model, target, limit)
    scores = {"snd": snd(target_probs), "target_entropy": entropy(target_probs), "dev_risk": None,
              "images": {"target": int(len(target_probs))}}
    if source_val is not None:
        train_features, _, _ = _outputs(model, source_train, limit)
        val_features, val_probs, val_labels = _outputs(model, source_val, limit)
        picked = val_probs[np.arange(len(val_labels)), val_labels.astype(int)]
        losses = -np.log(np.clip(picked, 1e-12, 1.0))
        scores["dev_risk"] = dev_risk(train_features, target_out[0], val_features, losses, seed)
        scores["images"].update(source_train=int(len(train_features)), source_val=int(len(val_features)))
    return scores
