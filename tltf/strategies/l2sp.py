"""Conservative training by L2-SP (Li, Grandvalet & Davoine, ICML 2018): keep the fine-tuned backbone near its
pretrained starting point.

The loss gains ``alpha / 2 * sum ||w - w0||^2`` over the backbone weights that train in the current stage, ``w0``
being their values when training starts (the pretrained weights, recorded before any resume restores later ones).
It is a penalty *in the loss* (each variable's ``regularizer``, which Keras adds to the loss of every step and
only for trainable variables, so it follows the stage plan), not a gradient scaling, which Adam would normalise
away. BatchNorm moving statistics are not weights that train and are not penalised. Blocks that ``--reinit-top``
re-initialised have no pretrained value to stay near and are left out.

The paper's second term ``beta / 2 * ||w_head||^2`` (plain weight decay on the new head) is not added: the head
is small and dropout already regularises it; use ``--optimizer adamw`` for weight decay.

The regularizers live on the variables only, not in the layers' configs, so ``model.keras`` does not carry them.

>>> anchors = attach_l2sp(model, alpha=0.01)        # doctest: +SKIP
>>> anchors.penalty()                                # 0.0 before training
0.0
"""

from __future__ import annotations

import keras
import numpy as np

from tltf.errors import TltfError
from tltf.training.methods import Method


class L2SP(keras.regularizers.Regularizer):
    """``alpha / 2 * sum((w - anchor) ** 2)`` for one variable."""

    def __init__(self, alpha: float, anchor):
        self.alpha = float(alpha)
        self.anchor = keras.ops.convert_to_tensor(np.asarray(anchor))

    def __call__(self, w):
        return 0.5 * self.alpha * keras.ops.sum(keras.ops.square(w - keras.ops.cast(self.anchor, w.dtype)))

    def get_config(self):  # never serialised with the model (see the module docstring)
        return {"alpha": self.alpha}


class Anchors:
    """The variables under L2-SP and their starting values."""

    def __init__(self, alpha: float, variables: list):
        self.alpha = alpha
        self.variables = variables
        self.start = [np.array(keras.ops.convert_to_numpy(v)) for v in variables]

    def distance(self) -> float:
        """``||w - w0||`` over all anchored variables (trainable now or not)."""
        return float(np.sqrt(sum(float(np.sum((keras.ops.convert_to_numpy(v) - w0) ** 2))
                                 for v, w0 in zip(self.variables, self.start))))

    def penalty(self) -> float:
        """``alpha / 2 * ||w - w0||^2`` over all anchored variables."""
        return 0.5 * self.alpha * self.distance() ** 2

    def report(self) -> dict:
        return {"alpha": self.alpha, "variables": len(self.variables),
                "parameters": int(sum(w.size for w in self.start)), "distance": self.distance(),
                "penalty": self.penalty()}


def attach_l2sp(model: keras.Model, alpha: float, exclude=()) -> Anchors:
    """Put an :class:`L2SP` regularizer, anchored at the current values, on every trainable-kind backbone weight of
    the tltf classifier ``model`` (the layers in ``exclude`` left out)."""
    from tltf.models.classifier import backbone_of
    from tltf.staging.freezing import all_trainable_variables

    in_backbone = {id(v) for v in backbone_of(model).weights}
    skipped = {id(v) for layer in exclude for v in layer.weights}
    variables = []
    for v in all_trainable_variables(model):  # kernels, biases, BN gamma/beta; not BN moving statistics
        if id(v) in in_backbone and id(v) not in skipped:
            v.regularizer = L2SP(alpha, keras.ops.convert_to_numpy(v))
            variables.append(v)
    return Anchors(alpha, variables)


class L2SPMethod(Method):
    """``--l2sp ALPHA`` as an engine plug-in: anchors set once the layer-transfer settings are applied."""

    name = "l2sp"

    @classmethod
    def wanted(cls, config) -> bool:
        return bool(config.l2sp)

    def check(self, config) -> None:
        if config.l2sp < 0:
            raise TltfError(f"--l2sp {config.l2sp}: must be >= 0")

    def setup(self, run) -> None:
        self.anchors = None
        if not run.transfer.backbone_trains:
            print("note: --l2sp has no effect: no stage trains the backbone", flush=True)
            return
        self.anchors = attach_l2sp(run.model, self.config.l2sp, exclude=run.transfer.reinitialised)

    def report(self, run) -> dict:
        anchors = getattr(self, "anchors", None)
        return {"strategies": {"l2sp_report": anchors.report() if anchors is not None else None}}
