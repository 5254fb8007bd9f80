"""``--adapt adabn`` / ``--adapt METHOD+adabn``: AdaBN (Li et al., arXiv 1603.04779), BatchNorm statistics from the
target domain.

After the trainer's loop (source-only training for ``--adapt adabn``, DANN/MMD/CORAL for ``METHOD+adabn``), the
moving mean and variance of every BatchNorm layer of the backbone, frozen ones included, are replaced by the average
of their batch statistics over the target images (all of them, in batches of ``--batch-size``, no augmentation). No
weight changes: the network normalises target images with target statistics. The saved model then carries the
target's statistics, so it is a target-domain model (its source validation accuracy, measured after, may fall).

The target numbers of ``metrics.json`` (``target_accuracy``, ``domain_accuracy``, ``source_val_accuracy``) are
measured again after the change; ``adabn`` records the batches and images used and the target accuracy before.
"""

from __future__ import annotations

import math

import keras

from tltf.errors import TltfError
from tltf.models.classifier import backbone_layer
from tltf.training.methods import Method, adapt_parts


def batchnorm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of ``model``'s backbone, frozen or not."""
    net = backbone_layer(model).net
    return [layer for layer in net._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def adapt_batchnorm(model: keras.Model, images, batches: int | None = None) -> int:
    """Set every backbone BatchNorm layer's moving statistics to the average batch statistics of ``images`` (a
    batched dataset of pixels or ``(pixels, label)``; ``batches`` of it, default all); returns the batches used."""
    from tltf.staging.batchnorm import recompute_batchnorm

    layers = batchnorm_layers(model)
    saved = [layer.trainable for layer in layers]
    try:
        for layer in layers:  # a frozen BatchNorm layer ignores training=True: let the pass see its batch statistics
            layer.trainable = True
        return recompute_batchnorm(model, images, batches=batches if batches is not None else 1 << 30,
                                   cache={})  # one compiled pass for all the batches
    finally:
        for layer, trainable in zip(layers, saved):
            layer.trainable = trainable


class AdaBN(Method):
    """Recompute the backbone's BatchNorm statistics on the target images once training is over."""

    name = "adabn"
    streams = ("target",)

    @classmethod
    def wanted(cls, config) -> bool:
        return "adabn" in adapt_parts(config.adapt)

    def check(self, config) -> None:
        if not config.target_data:
            raise TltfError(f"--adapt {config.adapt}: needs --target-data (the target images whose statistics "
                            "BatchNorm takes)")

    def note(self) -> dict:
        return {"adabn": "after training, BatchNorm statistics recomputed on all target images (AdaBN)"}

    def start(self, run) -> None:
        if not batchnorm_layers(run.model):
            raise TltfError(f"--adapt {run.config.adapt}: the {run.spec.name} backbone has no BatchNorm layers "
                            "(try cnn_small_bn, mobilenet_v2, resnet50 ...)")

    def trained(self, run) -> None:
        from tltf.adapt.dann import DANN, evaluate_adaptation
        from tltf.data import make_pipeline

        batch = run.config.batch_size

        def pipeline(split):
            return make_pipeline(split, run.size, batch, cache=False) if split is not None else None

        labelled = run.target_eval is not None
        self.before = self._target_accuracy(run) if labelled else None
        self.batches = adapt_batchnorm(run.model, pipeline(run.target), batches=math.ceil(len(run.target) / batch))
        self.images = min(len(run.target), self.batches * batch)
        if run.data.val is not None and isinstance(run.train_model, DANN):  # source, target and domain numbers
            self.after = evaluate_adaptation(run.train_model, pipeline(run.data.val), pipeline(run.target),
                                             pipeline(run.target_eval), batch)
        else:
            self.after = {"target_accuracy": self._target_accuracy(run)} if labelled else {}

    @staticmethod
    def _target_accuracy(run) -> float:
        from tltf.data import make_pipeline
        from tltf.training.evaluation import evaluate_model

        names = run.data.class_names  # the target labels are already mapped onto the source classes
        return evaluate_model(run.model, make_pipeline(run.target_eval, run.size, run.config.batch_size, cache=False),
                              names, names)["accuracy"]

    def report(self, run) -> dict:
        found = dict(self.after)
        found["adabn"] = {"batches": self.batches, "images": self.images, "target_accuracy_before": self.before}
        return found
