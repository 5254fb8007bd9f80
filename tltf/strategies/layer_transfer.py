"""How ``tltf fit`` applies the layer-transfer settings of a :class:`~tltf.training.FitConfig` to a freshly built
classifier.

Order matters and is fixed by the engine: plug-ins' ``start`` hooks see the pretrained backbone (the LwF teacher is
copied there); then the stage plan is checked against ``--freeze-until`` (does any stage train the backbone at
all?) and ``--reinit-top`` re-initialises the top blocks; plug-ins' ``setup`` hooks come after (L2-SP anchors the
remaining backbone weights at their pretrained values). When no stage trains the backbone and BatchNorm stays in inference mode, the backbone is a
fixed function and ``fit`` trains the head on cached features instead (:mod:`tltf.strategies.head_on_features`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import keras

from tltf.errors import TltfError


@dataclass
class LayerTransfer:
    """What :func:`apply_layer_transfer` set up on ``model`` (plug-ins add their reports under ``settings``)."""

    model: keras.Model
    frozen: list = field(default_factory=list)
    reinitialised: list = field(default_factory=list)
    feature_cache: bool = False
    backbone_trains: bool = True
    settings: dict = field(default_factory=dict)

    def report(self) -> dict:
        """The ``strategies`` entry of ``metrics.json``."""
        return {**self.settings, "frozen_layers": len(self.frozen), "reinitialised_layers": len(self.reinitialised),
                "backbone_trains": self.backbone_trains, "l2sp_report": None}


def apply_layer_transfer(model: keras.Model, plan, config, train_bn: bool, distributed: bool = False,
                     cache_allowed: bool = True) -> LayerTransfer:
    """Apply ``--freeze-until`` and ``--reinit-top`` to ``model`` and decide on the feature cache
    (``cache_allowed``: the trainer is the plain supervised one).

    Conservative training (``--l2sp``, ``--lwf``) are engine plug-ins (:mod:`.l2sp`, :mod:`.lwf`) that read
    ``backbone_trains`` and ``reinitialised`` from the result. Prints a one-line note for every setting that cannot
    act as asked (augmentation on cached features, re-initialised blocks that no stage trains).
    """
    from tltf.staging.freezing import blocks_of
    from tltf.strategies.partial import frozen_layers, reinit_top

    if config.reinit_top < 0:
        raise TltfError(f"--reinit-top {config.reinit_top}: must be >= 0")
    blocks = blocks_of(model)
    frozen = frozen_layers(blocks, config.freeze_until)
    trained = _trained_by_plan(model, plan, blocks, frozen)
    settings = {"freeze_until": config.freeze_until, "reinit_top": config.reinit_top, "l2sp": config.l2sp,
                "lwf": config.lwf, "lwf_temperature": config.lwf_temperature}
    result = LayerTransfer(model, frozen, backbone_trains=bool(trained), settings=settings)
    result.reinitialised = reinit_top(model, config.reinit_top, blocks, config.seed, frozen)
    never = [layer for layer in result.reinitialised if layer.weights and id(layer) not in trained]
    if never:
        _note(f"--reinit-top {config.reinit_top}: no stage trains {never[0].name} and {len(never) - 1} other "
              "re-initialised layer(s); they stay random (unfreeze them with the plan, e.g. --stage finetune)")

    if config.feature_cache and not trained and cache_allowed and plan.epochs:
        if train_bn:
            _note("feature cache off: --train-bn runs the backbone in training mode, so its features change")
        elif distributed:
            _note("feature cache off: not used with --distribute")
        else:
            result.feature_cache = True
            if str(config.augment).strip().lower() not in ("none", "", "auto"):
                _note(f"--augment {config.augment} does not apply to cached features (each image's features are "
                      "computed once, unaugmented); use --no-feature-cache to train on augmented images")
    return result


def _trained_by_plan(model, plan, blocks, frozen) -> set[int]:
    """``id`` of every backbone layer (top level) some stage of ``plan`` trains, after ``--freeze-until``."""
    from tltf.staging.freezing import freeze_to

    trained: set[int] = set()
    for stage in plan.stages:
        freeze_to(model, stage.unfreeze, stage.discriminative, blocks, frozen)
        for _, layers in blocks:
            trained.update(id(layer) for layer in layers if layer.trainable_weights)
    first = plan.stages[0] if plan.stages else None  # no stage at all: the head was set another way (LP)
    freeze_to(model, first.unfreeze if first else 0, first.discriminative if first else 1.0, blocks, frozen)
    return trained


def _note(text: str) -> None:
    print(f"note: {text}", flush=True)
