"""A backbone with its ``--weights``: ``imagenet``, ``none``, a weights file, a ``.keras`` model, or a named set.

:func:`build_backbone` is what :func:`tltf.models.classifier.build_classifier` builds its network with.
``imagenet``/``none`` are Keras' own (:meth:`tltf.backbones.BackboneSpec.build`); a path goes through
:func:`load_backbone_weights`; a named set such as ``torchvision:mobilenet_v2`` is first resolved to a local
``.keras`` file by the resolver registered for its prefix (:func:`register_named_weights`;
:mod:`tltf.weights.pretrained` registers ``torchvision``, and ``tltf/__init__`` imports it). The registry is how
this layer reaches the weights package without importing it: converting named weights builds a classifier, so
``tltf.weights`` imports ``tltf.models``, never the other way round.

:func:`copy_backbone_from` (``--weights FILE.keras``, an imported or a trained classifier) loads the file, finds its
backbone (the nested model of a tltf classifier, or the file's model itself when it is a bare backbone), and copies
every weight-bearing layer into a freshly built backbone **by layer name**, checking shapes. It also carries over
what makes those weights mean what they mean:

- each BatchNormalization's ``epsilon`` (torchvision-imported weights need 1e-5, Keras builds 1e-3), which is part
  of the layer config and so survives ``model.save``/``load_model`` of the classifier built on it;
- the source's input normalisation (its ``Preprocess`` layer), recorded on the target backbone as
  ``model._tltf_preprocess`` and ``model._tltf_preprocess_kwargs`` (``{"mean": [...], "std": [...]}``), which
  :func:`tltf.models.classifier.build_classifier` reads when no ``preprocess`` is given.

The input size may differ between source and target (convolution weights do not depend on it).

>>> net = build_backbone(backbones.get("mobilenet_v2"), 96, weights="imported.keras")   # doctest: +SKIP
>>> net._tltf_preprocess                                                                # doctest: +SKIP
'torch'
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import keras
import numpy as np

from tltf import backbones
from tltf.errors import TltfError, first_line
from tltf.models.backbone import Backbone
from tltf.models.loading import load_model
from tltf.models.preprocess import Preprocess

#: ``--weights`` prefix (before the colon) -> a function from the full name to the local ``.keras`` file.
NAMED_WEIGHTS: dict[str, Callable[[str], Path]] = {}
#: tltf's own named sets: the module that registers each prefix, imported by name on first use (it builds
#: classifiers, so it sits above this layer)
BUILTIN_NAMED_WEIGHTS = {"torchvision": "tltf.weights.pretrained"}


def register_named_weights(prefix: str, resolve: Callable[[str], Path]) -> None:
    """Resolve ``--weights PREFIX:NAME`` with ``resolve("PREFIX:NAME") -> Path`` of a ``.keras`` model."""
    NAMED_WEIGHTS[prefix] = resolve


def build_backbone(spec: backbones.BackboneSpec, image_size=None, weights: str | None = "imagenet") -> keras.Model:
    """The headless network of ``spec`` for ``image_size`` with ``weights`` (``imagenet``, ``none``, a path, or a
    registered name such as ``torchvision:mobilenet_v2``, fetched and imported once, cached)."""
    prefix = str(weights).split(":", 1)[0] if weights and ":" in str(weights) else None
    if prefix in BUILTIN_NAMED_WEIGHTS and prefix not in NAMED_WEIGHTS:
        import importlib

        importlib.import_module(BUILTIN_NAMED_WEIGHTS[prefix])  # registers itself
    if prefix in NAMED_WEIGHTS:
        weights = str(NAMED_WEIGHTS[prefix](str(weights)))
    model = spec.build(image_size, weights="imagenet" if weights == "imagenet" else "none")
    if weights not in ("imagenet", "none", None):
        load_backbone_weights(model, weights, spec.name)
    return model


def load_backbone_weights(model: keras.Model, path: str, name: str) -> None:
    """Load ``path`` into the headless backbone ``model``; refuse a file that does not match, in one line.

    ``.keras`` files are whole models (a tltf run or an imported classifier, see ``tltf weights import``): the layers
    of their backbone are matched by name and copied, BatchNorm epsilons included (:func:`copy_backbone_from`).
    Anything else is a Keras weights file (``.weights.h5`` / ``.h5``) for the headless backbone itself.
    """
    file = Path(path)
    if not file.exists():
        raise TltfError(f"--weights {path}: no such file")
    if file.suffix == ".keras":
        copy_backbone_from(model, file)
        return
    try:
        model.load_weights(str(file))
    except Exception as e:
        first = first_line(e)
        raise TltfError(f"--weights {path}: does not match {name} ({first})") from None


def _source_backbone(source: keras.Model) -> keras.Model:
    """The nested network of a tltf classifier's :class:`Backbone` layer, or ``source`` itself (a bare backbone)."""
    for layer in source.layers:
        if isinstance(layer, Backbone):
            return layer.net
    return source


def _preprocess_of(source: keras.Model):
    for layer in source.layers:
        if isinstance(layer, Preprocess):
            return layer
    return None


def copy_backbone_from(model: keras.Model, file: str | Path) -> None:
    """Copy the backbone weights (and BN epsilons, and preprocessing) of the ``.keras`` ``file`` into ``model``.

    ``model`` is a freshly built headless backbone (e.g. ``BackboneSpec.build(..., weights="none")``). Raises
    :class:`TltfError` ``"--weights FILE: does not match BACKBONE (...)"`` naming the first layer that is missing in
    the file or whose weight shapes differ; ``model`` is left untouched in that case.
    """
    file = Path(file)
    source = load_model(file, option="--weights")
    src = _source_backbone(source)
    target_name = model.name
    plan = []  # (target layer, source layer): all checked before anything is written
    for layer in model.layers:
        if not layer.weights:
            continue
        try:
            other = src.get_layer(layer.name)
        except ValueError:
            raise TltfError(f"--weights {file}: does not match {target_name} (layer {layer.name}: not in the "
                            f"file's backbone {src.name})") from None
        mine = [tuple(w.shape) for w in layer.weights]
        theirs = [tuple(w.shape) for w in other.weights]
        if mine != theirs:
            a, b = next(((t, m) for m, t in zip(mine, theirs) if m != t), (theirs, mine))
            raise TltfError(f"--weights {file}: does not match {target_name} (layer {layer.name}: shape {a} vs {b})")
        plan.append((layer, other))
    for layer, other in plan:
        layer.set_weights([np.asarray(w) for w in other.get_weights()])
        if isinstance(layer, keras.layers.BatchNormalization) and isinstance(other, keras.layers.BatchNormalization):
            layer.epsilon = other.epsilon
    pre = _preprocess_of(source)
    if pre is not None:
        model._tltf_preprocess = pre.mode
        model._tltf_preprocess_kwargs = ({"mean": list(pre.mean), "std": list(pre.std)}
                                         if pre.mean is not None and pre.std is not None else {})
