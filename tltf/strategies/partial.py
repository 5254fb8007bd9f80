"""Layer transfer: keep the lower backbone frozen for the whole run (``--freeze-until``), re-initialise the top
blocks (``--reinit-top``).

``--freeze-until X`` names a point in the registry's blocks (``tltf backbones``; bottom to top): a block index
(0-based: ``0`` is the lowest block), a block name (``block_5``) or a layer name (``block_5_project``). Everything
up to and including that block (for a layer: every layer up to and including it) stays frozen in every stage, so
it caps how far any stage unfreezes; frozen BatchNorm layers keep their statistics. The stage machinery applies
the cap itself (``keep_frozen`` of :func:`tltf.staging.freezing.freeze_to` and of the stage callback).

``--reinit-top K`` draws fresh values for every weight of the top ``K`` blocks from the layer's own initializers
(``kernel_initializer``, ``gamma_initializer``, ``moving_variance_initializer``…), seeded: the "copy the early
layers, learn the rest" of layer transfer. Re-initialised BatchNorm statistics are mean 0 / variance 1; with
BatchNorm kept in inference mode (the default for pretrained weights) they stay so and the block learns through
its scales and shifts; ``--train-bn`` lets them adapt.

>>> layers = frozen_layers(blocks, "block_10")        # doctest: +SKIP
>>> reinit_top(model, 2, blocks, seed=0)               # doctest: +SKIP
"""

from __future__ import annotations

import keras

from tltf.errors import TltfError

# variable name -> initializer attribute, where it is not "<name>_initializer"
_INITIALIZER_OF = {"depthwise_kernel": "depthwise_initializer", "pointwise_kernel": "pointwise_initializer",
                   "DepthwiseConv2D.kernel": "depthwise_initializer"}


def frozen_layers(blocks, freeze_until) -> list:
    """The backbone layers that ``--freeze-until freeze_until`` keeps frozen (``[]`` for ``None``)."""
    if freeze_until is None or freeze_until == "":
        return []
    names = [name for name, _ in blocks]
    value = str(freeze_until).strip()
    if value.isdigit():
        k = int(value)
        if k >= len(blocks):
            raise TltfError(f"--freeze-until {value}: the backbone has blocks 0-{len(blocks) - 1}")
        return [layer for _, layers in blocks[:k + 1] for layer in layers]
    if value in names:
        k = names.index(value)
        return [layer for _, layers in blocks[:k + 1] for layer in layers]
    for i, (_, layers) in enumerate(blocks):
        for j, layer in enumerate(layers):
            if layer.name == value:
                return [lay for _, lays in blocks[:i] for lay in lays] + layers[:j + 1]
    shown = ", ".join(names) if len(names) <= 8 else f"{', '.join(names[:4])}, …, {', '.join(names[-2:])}"
    raise TltfError(f"--freeze-until {value}: no such block or layer (blocks 0-{len(blocks) - 1}: {shown})")


def reinit_top(model: keras.Model, k: int, blocks, seed: int = 0, frozen=()) -> list:
    """Re-initialise every weight of the top ``k`` blocks from its layer's initializer; returns those layers."""
    if not k:
        return []
    if k < 0 or k > len(blocks):
        raise TltfError(f"--reinit-top {k}: the backbone has {len(blocks)} blocks")
    layers = [layer for _, lays in blocks[-k:] for layer in lays]
    clash = {id(layer) for layer in frozen} & {id(layer) for layer in layers}
    if clash:
        raise TltfError(f"--reinit-top {k}: re-initialises blocks that --freeze-until keeps frozen (they would stay "
                        "random); lower one of them")
    count = 0
    leaves = [sub for layer in layers for sub in layer._flatten_layers(include_self=True) if not sub._layers]
    for layer in leaves:
        for variable in layer.weights:
            init = _initializer(layer, variable)
            config = init.get_config()
            if "seed" in config:  # a fresh, reproducible draw per variable
                init = init.__class__.from_config({**config, "seed": seed * 100_003 + count})
            variable.assign(init(tuple(variable.shape), variable.dtype))
            count += 1
    return layers


def _initializer(layer, variable):
    name = variable.name.split("/")[-1].split(":")[0]
    attr = _INITIALIZER_OF.get(f"{type(layer).__name__}.{name}") or _INITIALIZER_OF.get(name, f"{name}_initializer")
    init = getattr(layer, attr, None)
    if init is None:
        raise TltfError(f"--reinit-top: layer {layer.name} ({type(layer).__name__}) has no initializer for its "
                        f"weight {name!r}")
    return keras.initializers.get(init)
