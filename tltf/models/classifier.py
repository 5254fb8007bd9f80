"""A transfer-learning classifier: raw pixels -> :class:`Preprocess` -> backbone -> :class:`ClassifierHead`.

The backbone is a nested Keras model named after its registry entry, wrapped in a :class:`Backbone` layer that
calls it in inference mode so its BatchNorm layers keep their moving statistics even when unfrozen (the Keras
transfer-learning guide's advice, which plain ``base_model(x, training=False)`` no longer achieves in Keras 3),
unless ``train_bn=True``. ``backbone_of(model)`` returns the nested network.

>>> model = build_classifier("mobilenet_v2", ["cat", "dog"], image_size=96, weights="none")   # doctest: +SKIP
>>> model.input_shape, model.output_shape                                                     # doctest: +SKIP
((None, 96, 96, 3), (None, 1))
"""

from __future__ import annotations

import keras

from tltf import backbones
from tltf.errors import TltfError
from tltf.models.backbone import Backbone
from tltf.models.head import ClassifierHead
from tltf.models.preprocess import Preprocess
from tltf.models.transfer import build_backbone

INPUT_NAME = "pixels"
HEAD_NAME = "head"
PREPROCESS_NAME = "preprocess"
BACKBONE_NAME = "backbone"


FEATURES = ("final", "multilevel")


def multilevel_taps(spec: backbones.BackboneSpec, net: keras.Model) -> list[str]:
    """The layers a ``multilevel`` head reads besides the network's output: the output (last layer) of each block
    in the top half of the registry's blocks, the final block excepted (its output is the network's).

    Measured (``benchmarks/small_data.py``'s tasks, MobileNetV2 torchvision weights, 96 px, logistic regression on
    the pooled features, seed 0): MNIST 10/class 0.826 final -> 0.878 top half (all blocks 0.875); 10 shapes per
    class 0.880 -> 0.907 (all blocks 0.887); UCI digits 0.886 -> 0.916 with block_11 alone; LFW 1.0 either way.
    """
    blocks = spec.blocks(net)
    return [layers[-1].name for _, layers in blocks[len(blocks) // 2:-1] if layers]


def build_classifier(backbone: str | backbones.BackboneSpec, class_names, image_size=None, weights="imagenet",
                     dropout: float = 0.2, train_bn: bool = False, preprocess: str | None = None,
                     features: str = "final", head_normalize: bool = False,
                     head: keras.layers.Layer | None = None) -> keras.Model:
    """Build the model that ``tltf fit`` trains; ``weights`` is ``imagenet``, ``none`` or a file path;
    ``features`` is ``final`` (the network's output) or ``multilevel`` (see :func:`multilevel_taps`);
    ``head_normalize``: the head standardises and L2-normalises its features (a prototype classifier's head);
    ``head``: another head layer named ``head`` with ``class_names`` (e.g. a zero-shot attribute head)."""
    if features not in FEATURES:
        raise TltfError(f"--features {features}: choose final or multilevel")
    spec = backbone if isinstance(backbone, backbones.BackboneSpec) else backbones.get(backbone)
    net = build_backbone(spec, image_size, weights)
    h, w = net.input_shape[1:3]
    mode = preprocess or getattr(net, "_tltf_preprocess", None) or spec.preprocess
    pre_kwargs = getattr(net, "_tltf_preprocess_kwargs", {}) or {}
    inputs = keras.Input((h, w, 3), name=INPUT_NAME)
    x = Preprocess(mode, name=PREPROCESS_NAME, **pre_kwargs)(inputs)
    taps = multilevel_taps(spec, net) if features == "multilevel" else ()
    x = Backbone(net, bn_inference=not train_bn, taps=taps, name=BACKBONE_NAME)(x)
    if head is None:
        head = ClassifierHead(class_names, dropout=dropout, normalize=head_normalize, name=HEAD_NAME)
    outputs = head(x)
    return keras.Model(inputs, outputs, name=f"tltf_{spec.name}")


def backbone_layer(model: keras.Model) -> Backbone:
    """The :class:`Backbone` wrapper layer of a tltf classifier."""
    for layer in model.layers:
        if isinstance(layer, Backbone):
            return layer
    raise ValueError(f"{model.name} has no tltf Backbone layer")


def backbone_of(model: keras.Model) -> keras.Model:
    """The nested headless network (e.g. the Keras MobileNetV2) of a tltf classifier."""
    return backbone_layer(model).net


def head_of(model: keras.Model) -> ClassifierHead:
    return model.get_layer(HEAD_NAME)


def class_names_of(model: keras.Model) -> list[str]:
    return list(head_of(model).class_names)
