"""Start a backbone from another model's backbone: ``--weights FILE.keras`` (an imported or a trained classifier).

:func:`copy_backbone_from` loads the ``.keras`` file, finds its backbone (the nested model of a tltf classifier, or
the file's model itself when it is a bare backbone), and copies every weight-bearing layer into a freshly built
backbone **by layer name**, checking shapes. It also carries over what makes those weights mean what they mean:

- each BatchNormalization's ``epsilon`` (torchvision-imported weights need 1e-5, Keras builds 1e-3), which is part
  of the layer config and so survives ``model.save``/``load_model`` of the classifier built on it;
- the source's input normalisation (its ``Preprocess`` layer), recorded on the target backbone as
  ``model._tltf_preprocess`` and ``model._tltf_preprocess_kwargs`` (``{"mean": [...], "std": [...]}``), which
  :func:`tltf.models.classifier.build_classifier` reads when no ``preprocess`` is given.

The input size may differ between source and target (convolution weights do not depend on it).

>>> net = backbones.get("mobilenet_v2").build(96, weights="none")     # doctest: +SKIP
>>> copy_backbone_from(net, "imported.keras"); net._tltf_preprocess   # doctest: +SKIP
'torch'
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from tltf.errors import TltfError


def _load(file: Path) -> keras.Model:
    import tltf  # noqa: F401  (registers tltf's serialisable layers)

    try:
        return keras.models.load_model(str(file), compile=False)
    except Exception as e:  # a corrupt zip, a foreign custom layer, a Lambda refused by safe mode …
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise TltfError(f"--weights {file}: not a loadable Keras model ({first})") from None


def _source_backbone(source: keras.Model) -> keras.Model:
    from tltf.models.classifier import backbone_of

    try:
        return backbone_of(source)
    except ValueError:
        return source  # a bare backbone saved on its own


def _preprocess_of(source: keras.Model):
    from tltf.models.preprocess import Preprocess

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
    source = _load(file)
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
