"""The classifier two-sample test: can a domain classifier tell the new data from the reference data?

Lopez-Paz and Oquab, "Revisiting Classifier Two-Sample Tests" (ICLR 2017). A logistic regression on standardised
features learns "reference (0) or new (1)"; every point is scored by a model that never saw it (stratified k-fold
cross-validated predictions). A held-out AUC near 0.5 means the classifier cannot tell the two apart; near 1, it
can. Unlike the MMD test it also says *which* new images look least like the reference: those it scores highest.

The p-value is Lopez-Paz and Oquab's: a one-sided Mann-Whitney U test of the held-out scores of *one* fold (the
first), whose model never saw those points, so under the null hypothesis their labels are exchangeable given the
model and the test is exact (up to the normal approximation). The pooled scores of all folds are *not* used for it:
the folds' models share training points, so their AUCs are positively correlated and a p-value that treats the
pooled scores as one independent sample comes out too small (measured on random halves of MNIST features: 12 %
below 0.05 instead of 5 %; ``benchmarks/drift_calibration.py``). The MMD test decides the verdict; this one
explains it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tltf.errors import TltfError


@dataclass(frozen=True)
class ClassifierTestResult:
    """``auc`` and ``accuracy`` (balanced, at 0.5) of the out-of-fold domain scores, the one-sided ``p_value`` of
    one held-out fold's scores, and ``scores``: each new point's out-of-fold probability of being new
    (``(n_y,)``, in ``y``'s order)."""

    auc: float
    accuracy: float
    p_value: float
    folds: int
    scores: np.ndarray

    def as_dict(self) -> dict:
        return {"auc": self.auc, "accuracy": self.accuracy, "p_value": self.p_value, "folds": self.folds}


def classifier_test(x: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0,
                    c: float = 0.1) -> ClassifierTestResult:
    """Cross-validated logistic regression (standardised features, ``C = c``, balanced class weights) separating
    ``x`` (reference) from ``y`` (new data); see the module docstring."""
    from scipy.stats import mannwhitneyu
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise TltfError(f"classifier test: two (N, D) feature arrays of the same width needed, got {x.shape} and "
                        f"{y.shape}")
    k = min(folds, len(x), len(y))
    if k < 2:
        raise TltfError(f"classifier test: needs at least 2 samples on each side (got {len(x)} and {len(y)})")
    z = np.concatenate([x, y])
    domain = np.r_[np.zeros(len(x), int), np.ones(len(y), int)]
    scores = np.zeros(len(z))
    p_value = 1.0
    # liblinear: on a few hundred points of ~1,000 dimensions it converges ~20x faster than lbfgs (measured)
    splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(z, domain)
    for fold, (train, test) in enumerate(splits):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", solver="liblinear"))
        scores[test] = model.fit(z[train], domain[train]).predict_proba(z[test])[:, 1]
        if fold == 0:
            held_out = domain[test] == 1
            p_value = float(mannwhitneyu(scores[test][held_out], scores[test][~held_out], alternative="greater").pvalue)
    auc = float(roc_auc_score(domain, scores))
    accuracy = float(balanced_accuracy_score(domain, scores >= 0.5))
    return ClassifierTestResult(auc, accuracy, p_value, k, scores[len(x):].copy())
