"""``--attributes classes.csv``: the engine plug-in of zero-shot learning.

- ``data``: the run's classes become the table's (seen classes keep their images, unseen ones have none), so the
  saved model, its metrics and its ONNX export list every class of the table;
- ``classifier_options``: an :class:`tltf.zeroshot.head.AttributeHead` instead of the plain head (the LP
  initialisation, which writes a plain head, is off);
- ``trained``: calibrated stacking's ``gamma`` from the seen validation images (:mod:`tltf.zeroshot.calibration`);
- ``report``: ``zero_shot`` in metrics.json: the table, seen and unseen classes, ``gamma``, and with
  ``--eval-data`` (labelled images of any class of the table) the generalised zero-shot accuracies.
"""

from __future__ import annotations

import numpy as np

from tltf.errors import TltfError
from tltf.training.methods import Method


class Attributes(Method):
    name = "attributes"
    sets_head = True

    @classmethod
    def wanted(cls, config) -> bool:
        return bool(config.attributes)

    def check(self, config) -> None:
        from tltf.zeroshot.attributes import read_attributes

        self.table = read_attributes(config.attributes)
        if config.stage == "prototypes":
            raise TltfError("--attributes: not with --stage prototypes (both set the head)")
        if config.target_data:
            raise TltfError("--attributes: not with --target-data yet")

    def note(self) -> dict:
        return {"attributes": f"{self.table.matrix.shape[1]} attributes of {len(self.table.class_names)} classes "
                              f"from {self.config.attributes}; the head predicts attributes (DAP) and lowers seen "
                              f"classes' scores by gamma (calibrated stacking, {self._rate():.0%} of seen "
                              "validation images allowed to an unseen class)"}

    def _rate(self) -> float:
        from tltf.zeroshot.calibration import UNSEEN_RATE

        return float(self.options.get("unseen_rate", UNSEEN_RATE))

    def data(self, run) -> None:
        from tltf.data.relabel import relabel

        rows = self.table.index(run.data.class_names)
        self.seen = np.zeros(len(self.table.class_names), np.float32)
        self.seen[rows] = 1.0
        if self.seen.all():
            raise TltfError(f"--attributes {run.config.attributes}: every class of the table has images in --data; "
                            "zero-shot needs classes without images")
        run.data = relabel(run.data, self.table.class_names, rows)

    def classifier_options(self) -> dict:
        from tltf.zeroshot.head import AttributeHead
        from tltf.models.classifier import HEAD_NAME

        return {"head": AttributeHead(self.table.class_names, self.table.matrix, self.seen,
                                      self.table.attribute_names, dropout=self.config.dropout, name=HEAD_NAME)}

    def trained(self, run) -> None:
        from tltf.zeroshot.calibration import choose_gamma

        split = run.data.val if run.data.val is not None and len(run.data.val) else run.data.train
        scores, _ = self._scores(run, split)
        gamma = choose_gamma(scores, self.seen, self._rate())
        head = run.model.get_layer("head")
        head.gamma.assign(gamma)
        self.report_ = {"table": str(run.config.attributes), "attributes": self.table.attribute_names,
                        "seen": [c for c, s in zip(self.table.class_names, self.seen) if s],
                        "unseen": [c for c, s in zip(self.table.class_names, self.seen) if not s],
                        "gamma": gamma, "unseen_rate": self._rate(),
                        "gamma_from": "validation" if split is run.data.val else "training"}
        if run.config.eval_data:
            self.report_["eval"] = self._evaluate(run)

    def _scores(self, run, split):
        """DAP scores ``(N, classes)`` and labels of ``split``, from its pooled backbone features (one pass, through
        the same extractor ``tltf features`` uses; not cached: the backbone may have been fine-tuned)."""
        from tltf.strategies.features import split_features

        feats = split_features(run.model, split, run.config.batch_size, cache=False)
        scores = run.model.get_layer("head").class_scores(feats.x, training=False)
        return np.asarray(scores, np.float64), feats.y

    def _evaluate(self, run) -> dict:
        """Generalised zero-shot scores on ``--eval-data`` (all its splits), calibrated and, for comparison, with
        ``gamma = 0`` (plain DAP)."""
        from tltf.data import load_source
        from tltf.data.relabel import relabel
        from tltf.zeroshot.calibration import gzsl_scores, stacked_probabilities

        source = load_source(run.config.eval_data, run.config.data_dir, "--eval-data")
        source = relabel(source, self.table.class_names, self.table.index(source.class_names, "--eval-data"))
        parts = [self._scores(run, split) for split in (source.train, source.val, source.test) if split is not None]
        scores, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        gamma = self.report_["gamma"]
        result = gzsl_scores(stacked_probabilities(scores, self.seen, gamma), labels, self.seen)
        plain = gzsl_scores(stacked_probabilities(scores, self.seen, 0.0), labels, self.seen)
        if run.verbose:
            def cell(v):
                return "-" if v is None else f"{v:.3f}"
            print(f"zero-shot on {run.config.eval_data}: seen {cell(result['seen_accuracy'])}, unseen "
                  f"{cell(result['unseen_accuracy'])}, harmonic mean {cell(result['harmonic_mean'])} (all classes "
                  f"competing; {cell(plain['harmonic_mean'])} without calibration); unseen among unseen "
                  f"{cell(result['unseen_only_accuracy'])}", flush=True)
        return {"data": str(run.config.eval_data), **result, "uncalibrated": plain}

    def report(self, run) -> dict:
        return {"zero_shot": self.report_}

