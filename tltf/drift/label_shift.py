"""Label shift by black-box shift estimation (BBSE): the new data's class prior from a classifier's predictions.

Lipton, Wang and Smola, "Detecting and Correcting for Label Shift with Black Box Predictors" (ICML 2018). Under
label shift the class-conditional images ``p(x | y)`` stay the same and only the prior ``p(y)`` moves, so a fixed
classifier's confusion behaviour carries over: with ``C[i, j] = P_ref(ŷ = i, y = j)`` measured on labelled
reference data and ``μ[i] = P_new(ŷ = i)`` its prediction rates on the new data, the importance weights
``w = q / p`` solve ``C w = μ``, and the new prior is ``q = w · p``. The solution is clipped to ``>= 0`` and
renormalised (finite samples can push a small class below zero). The error of the estimate grows as the smallest
singular value of ``C`` shrinks, so that value is reported too.

With the new prior known, the classifier's expected accuracy on the new data is ``Σ_j q_j · recall_j``, its
per-class recalls measured on the reference.

>>> rng = np.random.default_rng(0)
>>> y_ref = rng.integers(0, 2, 2000)
>>> noisy = lambda y: np.where(rng.random(len(y)) < 0.9, y, 1 - y)   # a classifier right 90 % of the time
>>> y_new = (rng.random(2000) < 0.8).astype(int)                      # class 1 goes from 50 % to 80 %
>>> shift = bbse(y_ref, noisy(y_ref), noisy(y_new), ["a", "b"])
>>> bool(abs(shift.estimated_prior[1] - 0.8) < 0.05)
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tltf.errors import TltfError


@dataclass(frozen=True)
class LabelShift:
    """The BBSE estimate: priors over ``class_names`` (reference, predicted on the new data, estimated), the
    importance ``weights`` ``q / p`` (0 for a class absent from the reference), accuracies and the conditioning."""

    class_names: list[str]
    reference_prior: np.ndarray
    prediction_prior: np.ndarray
    estimated_prior: np.ndarray
    weights: np.ndarray
    reference_accuracy: float
    expected_accuracy: float
    min_singular_value: float
    n_reference: int
    n_data: int

    def as_dict(self) -> dict:
        def rounded(a):
            return [round(float(v), 6) for v in a]

        return {"class_names": list(self.class_names), "reference_prior": rounded(self.reference_prior),
                "estimated_prior": rounded(self.estimated_prior), "prediction_prior": rounded(self.prediction_prior),
                "weights": rounded(self.weights), "reference_accuracy": round(self.reference_accuracy, 6),
                "expected_accuracy": round(self.expected_accuracy, 6),
                "min_singular_value": round(self.min_singular_value, 6)}


def joint_confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """``C[i, j] = P(ŷ = i, y = j)`` (predicted rows, true columns), as frequencies that sum to 1."""
    c = np.zeros((k, k))
    np.add.at(c, (np.asarray(y_pred, int), np.asarray(y_true, int)), 1.0)
    return c / max(1, len(y_true))


def _hard(pred: np.ndarray, k: int, what: str) -> np.ndarray:
    """Predicted classes from labels ``(N,)`` or probabilities ``(N, k)``."""
    pred = np.asarray(pred)
    if pred.ndim == 2:
        if pred.shape[1] != k:
            raise TltfError(f"label shift: {what} has {pred.shape[1]} columns for {k} classes")
        pred = pred.argmax(axis=1)
    pred = pred.astype(int).reshape(-1)
    if pred.size and (pred.min() < 0 or pred.max() >= k):
        raise TltfError(f"label shift: {what} holds classes outside 0..{k - 1}")
    return pred


def bbse(reference_labels: np.ndarray, reference_predictions: np.ndarray, data_predictions: np.ndarray,
         class_names: list[str]) -> LabelShift:
    """The new data's class prior from a classifier's predictions (class indices or probabilities) on labelled
    reference data and on the new data; see the module docstring."""
    k = len(class_names)
    y_ref = _hard(reference_labels, k, "reference labels")
    p_ref = _hard(reference_predictions, k, "reference predictions")
    p_new = _hard(data_predictions, k, "data predictions")
    if len(y_ref) != len(p_ref):
        raise TltfError(f"label shift: {len(y_ref)} reference labels but {len(p_ref)} predictions")
    if not len(y_ref) or not len(p_new):
        raise TltfError("label shift: needs reference and new predictions (got an empty set)")
    prior = np.bincount(y_ref, minlength=k) / len(y_ref)
    mu = np.bincount(p_new, minlength=k) / len(p_new)
    c = joint_confusion(y_ref, p_ref, k)
    weights = np.linalg.lstsq(c, mu, rcond=None)[0]  # C^-1 μ when C is invertible, least squares otherwise
    q = np.clip(weights * prior, 0.0, None)
    q = q / q.sum() if q.sum() > 0 else mu.copy()  # all clipped away: nothing better than the prediction rates
    recall = np.divide(np.diag(c), prior, out=np.zeros(k), where=prior > 0)
    w = np.divide(q, prior, out=np.zeros(k), where=prior > 0)
    return LabelShift(list(class_names), prior, mu, q, w, float(np.trace(c)), float(q @ recall),
                      float(np.linalg.svd(c, compute_uv=False).min()), len(y_ref), len(p_new))
