"""``--stage prototypes``: a few-shot classifier imprinted into the head, optionally fine-tuned after.

A plug-in of the training engine (:class:`tltf.training.Method`). The classifier is built with a normalising head
(:class:`tltf.models.head.ClassifierHead` ``normalize=True``); before any stage trains, the training images'
frozen features (cached, :func:`tltf.strategies.features.split_features`) set its statistics and its ``Dense``
layer to the nearest-prototype classifier (:func:`tltf.fewshot.prototypes.imprint`). Without ``--epochs`` that
is the whole run; ``--epochs N`` then fine-tunes every layer for N epochs at a tenth of ``--lr`` (imprinting
followed by fine-tuning, Qi et al. 2018). ``metrics.json``'s ``prototypes`` records the imprint: images per
class, training and validation accuracy and loss.
"""

from __future__ import annotations

import time

import numpy as np

from tltf.errors import TltfError
from tltf.models.classifier import head_of
from tltf.training.methods import Method


class Prototypes(Method):
    name = "prototypes"
    sets_head = True

    @classmethod
    def wanted(cls, config) -> bool:
        return config.stage == "prototypes"

    def classifier_options(self) -> dict:
        return {"head_normalize": True}

    def note(self) -> dict:
        return {"prototypes": "the head is the nearest class mean of the training images' standardised, "
                              "L2-normalised features (UCI digits 10-way 1-shot 0.604 vs 0.538 for L2 normalisation "
                              "alone, 5-shot 0.821 vs 0.753; tltf.fewshot.prototypes)"}

    def setup(self, run) -> None:
        from tltf.fewshot.prototypes import normalise
        from tltf.strategies.features import split_features
        from tltf.strategies.linear_probe_init import head_scores

        start = time.perf_counter()
        feats = split_features(run.model, run.data.train, run.config.batch_size, True)
        head = head_of(run.model)
        num_classes = len(head.class_names)
        centre, inv_std, kernel, bias = imprint_head(head, feats.x, feats.y, num_classes)
        z = normalise(feats.x, centre, inv_std)
        report = {"shots": np.bincount(feats.y, minlength=num_classes).tolist(), "num_train": int(len(feats.y))}
        report["train_accuracy"], report["train_loss"] = head_scores(z, feats.y, kernel, bias)
        if run.data.val is not None:
            val = split_features(run.model, run.data.val, run.config.batch_size, True)
            report["val_accuracy"], report["val_loss"] = head_scores(normalise(val.x, centre, inv_std), val.y,
                                                                     kernel, bias)
        report.update(seconds=round(time.perf_counter() - start, 2), features_cached=feats.cached)
        self.report_ = report
        if run.verbose:
            shown = f", val accuracy {report['val_accuracy']:.3f}" if "val_accuracy" in report else ""
            print(f"prototypes: head imprinted from {len(feats.y)} images' features{shown} in "
                  f"{report['seconds']:.1f}s", flush=True)

    def report(self, run) -> dict:
        return {"prototypes": self.report_}

    def start_head(self, run) -> dict | None:
        return self.report_


def imprint_head(head, features: np.ndarray, labels: np.ndarray, num_classes: int):
    """Set a normalising :class:`ClassifierHead` to the prototypes of ``features``; returns what it wrote."""
    from tltf.fewshot.prototypes import imprint

    if not getattr(head, "normalize", False):
        raise TltfError("prototypes: the classifier's head does not normalise its features (build it with "
                        "head_normalize=True)")
    centre, inv_std, kernel, bias = imprint(features, labels, num_classes)
    head.centre.assign(centre)
    head.inv_std.assign(inv_std)
    head.dense.kernel.assign(kernel)
    head.dense.bias.assign(bias)
    return centre, inv_std, kernel, bias

