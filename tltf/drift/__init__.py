"""Concept drift: does new data still look like the training data, and how did its classes move?

- :func:`mmd_test` (:mod:`tltf.drift.mmd`): kernel two-sample test, Gaussian kernel, permutation p-value;
- :func:`classifier_test` (:mod:`tltf.drift.classifier_test`): a domain classifier's held-out AUC, per-image scores;
- :func:`bbse` (:mod:`tltf.drift.label_shift`): the new class prior by black-box shift estimation;
- :func:`detect_drift` (:mod:`tltf.drift.detect`): all three on features of images (``tltf drift``), giving a
  :class:`DriftReport` (:mod:`tltf.drift.report`).

The statistics take plain ``(N, D)`` numpy features and import nothing heavy; TensorFlow loads only when
:func:`detect_drift` reads images for a ``.keras`` model or a backbone. With an ``.onnx`` model exported with a
features output it never loads for image folders: onnxruntime, Pillow, numpy, scikit-learn and scipy do it all.
"""

from tltf.drift.classifier_test import ClassifierTestResult, classifier_test
from tltf.drift.detect import detect_drift
from tltf.drift.label_shift import LabelShift, bbse
from tltf.drift.mmd import MMDResult, mmd_test
from tltf.drift.report import DriftReport

__all__ = ["ClassifierTestResult", "DriftReport", "LabelShift", "MMDResult", "bbse", "classifier_test",
           "detect_drift", "mmd_test"]
