"""Where a drift check's features come from: a trained tltf classifier's penultimate layer, or a bare backbone.

Both go through :mod:`tltf.strategies.features` (``feature_extractor`` and ``split_features``): pixels ->
preprocessing -> backbone -> global average pooling, with BatchNorm in inference mode, and the feature cache keyed
by the extractor's weights and the exact pixels. For a classifier these pooled features are exactly what its
head's dense layer reads, so its class probabilities follow from the same features without a second pass
(:meth:`FeatureSource.probabilities`), which is what label-shift estimation needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tltf.errors import TltfError

_PLACEHOLDER_CLASSES = ["a", "b"]  # a backbone alone gets a throwaway head: build_classifier needs class names


@dataclass
class FeatureSource:
    """A tltf classifier (``model``) and its feature extractor; ``class_names`` only for a trained ``--model``."""

    model: object  # keras.Model
    extractor: object  # keras.Model
    key: str | None
    description: dict
    class_names: list[str] | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.model.input_shape[1:3])

    def features(self, images, batch_size: int = 32, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(N, D)`` and labels ``(N,)`` of an :class:`tltf.drift.images.ImageSet`."""
        from tltf.strategies.features import split_features

        result = split_features(self.model, images.split, batch_size, cache, self.extractor, self.key)
        return result.x, result.y

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """The classifier's class probabilities ``(N, K)`` from its pooled features (its head's dense layer)."""
        from tltf.models.classifier import head_of
        from tltf.runtime.outputs import class_probabilities

        if self.class_names is None:
            raise TltfError("class probabilities need a trained --model")
        head = head_of(self.model)
        return class_probabilities(head(np.asarray(features, np.float32), training=False))


def from_model(path: str, image_size: int | None = None, cache: bool = True) -> FeatureSource:
    """The penultimate-layer features of the tltf ``.keras`` classifier at ``path`` (``--model``)."""
    from tltf.models.classifier import class_names_of
    from tltf.models.loading import load_model
    from tltf.strategies.features import feature_extractor, fingerprint

    model = load_model(path, option="--model")
    try:
        extractor = feature_extractor(model)
        names = class_names_of(model)
    except (ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise TltfError(f"--model {path}: not a tltf classifier ({first})") from None
    size = tuple(int(s) for s in model.input_shape[1:3])
    if image_size is not None and (image_size, image_size) != size:
        raise TltfError(f"--image-size {image_size}: the model takes {size[0]}x{size[1]} images; leave it out with "
                        "--model")
    return FeatureSource(model, extractor, fingerprint(model) if cache else None,
                         {"model": str(path), "image_size": list(size), "dims": int(extractor.output_shape[-1])},
                         list(names))


def from_backbone(backbone: str, weights: str, image_size: int | None = None, cache: bool = True,
                  seed: int = 0) -> FeatureSource:
    """The pooled features of a pretrained ``backbone`` with ``weights`` (``--backbone`` / ``--weights``).

    ``seed`` seeds Keras (``keras.utils.set_random_seed``) before the build, so that ``--weights none`` (random
    features, e.g. for a quick check) gives the same extractor, and the same p-values, on every run."""
    import keras

    from tltf import backbones
    from tltf.models.classifier import build_classifier
    from tltf.strategies.features import feature_extractor, fingerprint

    spec = backbones.get(backbone)
    keras.utils.set_random_seed(seed)
    model = build_classifier(spec, _PLACEHOLDER_CLASSES, image_size, weights, dropout=0.0, train_bn=False)
    extractor = feature_extractor(model)
    size = tuple(int(s) for s in model.input_shape[1:3])
    return FeatureSource(model, extractor, fingerprint(model) if cache else None,
                         {"backbone": spec.name, "weights": str(weights), "image_size": list(size),
                          "dims": int(extractor.output_shape[-1])})
