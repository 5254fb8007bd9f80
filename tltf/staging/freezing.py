"""Freezing and unfreezing a tltf classifier by blocks (the mid-level verbs, as in fastai's ``freeze_to``).

A tltf classifier is ``preprocess -> backbone -> head``. :func:`freeze_to` makes the head and the top ``n``
backbone blocks trainable and everything below frozen, and returns the learning-rate multiplier of every trainable
variable (discriminative rates: the head 1, lower blocks geometrically less, the lowest unfrozen ``ratio``).
BatchNorm layers of frozen blocks are frozen too, so their moving statistics never change.
"""

from __future__ import annotations

import math

import keras

from tltf import backbones
from tltf.errors import TltfError
from tltf.models.classifier import backbone_layer, backbone_of


def blocks_of(model: keras.Model, spec: backbones.BackboneSpec | None = None):
    """The backbone's ordered ``(name, layers)`` blocks, bottom to top."""
    net = backbone_of(model)
    spec = spec or backbones.get(net.name)
    return spec.blocks(net)


def resolve_unfreeze(unfreeze: int | str, block_names: list[str]) -> int:
    """How many top blocks ``unfreeze`` (an int, ``"all"`` or a block name) means."""
    n = len(block_names)
    if unfreeze == "all":
        return n
    if isinstance(unfreeze, int):
        return min(unfreeze, n)
    if unfreeze in block_names:
        return n - block_names.index(unfreeze)
    raise TltfError(f"unfreeze {unfreeze!r}: no such block (blocks: {', '.join(block_names)})")


def freeze_to(model: keras.Model, unfreeze: int | str, ratio: float = 1.0, blocks=None,
              keep_frozen=()) -> dict[str, float]:
    """Train the head and the top ``unfreeze`` blocks; return ``{variable.path: lr_multiplier}``.

    ``keep_frozen``: backbone layers that stay frozen whatever ``unfreeze`` says (``--freeze-until``).
    """
    blocks = blocks if blocks is not None else blocks_of(model)
    capped = {id(layer) for layer in keep_frozen}
    n = resolve_unfreeze(unfreeze, [name for name, _ in blocks])
    wrapper = backbone_layer(model)
    net = wrapper.net
    wrapper.trainable = True  # the containers; each layer is set below
    net.trainable = True
    multipliers: dict[str, float] = {}
    for i, (_, layers) in enumerate(blocks):
        depth = len(blocks) - i  # 1 for the top block
        on = depth <= n
        for layer in layers:
            layer.trainable = on and id(layer) not in capped
        if on:
            scale = ratio ** (depth / n) if n else 1.0
            for layer in layers:
                for v in layer.trainable_weights:
                    multipliers[v.path] = scale
    for layer in model.layers:
        if layer is not wrapper:
            layer.trainable = True
            for v in layer.trainable_weights:
                multipliers[v.path] = 1.0
    return multipliers


def freeze_backbone(model: keras.Model) -> None:
    freeze_to(model, 0)


def unfreeze_all(model: keras.Model) -> None:
    freeze_to(model, "all")


def trainable_count(model: keras.Model) -> int:
    return int(sum(math.prod(v.shape) for v in model.trainable_weights))


def all_trainable_variables(model: keras.Model) -> list:
    """Every variable that some stage may train (as if the whole network were unfrozen), in model order."""
    saved = {id(layer): layer.trainable for layer in model._flatten_layers(include_self=True)}
    try:
        for layer in model._flatten_layers(include_self=True):
            layer.trainable = True
        return list(model.trainable_variables)
    finally:
        for layer in model._flatten_layers(include_self=True):
            layer.trainable = saved[id(layer)]
