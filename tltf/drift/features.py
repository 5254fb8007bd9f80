"""Where a drift check's features come from: a trained tltf classifier's penultimate layer, or a bare backbone.

Both go through :mod:`tltf.strategies.features` (``feature_extractor`` and ``split_features``): pixels ->
preprocessing -> backbone -> global average pooling, with BatchNorm in inference mode, and the feature cache keyed
by the extractor's weights and the exact pixels. For a classifier these pooled features are exactly what its
head's dense layer reads, so its class probabilities follow from the same features without a second pass
(:meth:`FeatureSource.probabilities`), which is what label-shift estimation needs. Both load the training stack
(:func:`tltf.extras.training_stack`: TensorFlow quietly, tltf's Keras objects registered) before Keras.

An exported ``.onnx`` classifier (:func:`from_onnx`, :class:`OnnxFeatureSource`) runs without TensorFlow: its
``features`` output (``tltf export --onnx --features``) is the same extractor's, its probabilities come from the
same onnxruntime pass, and the pixels from :func:`tltf.drift.images.pixel_batches`. Its cache entries are keyed by
the file's SHA-256 and the exact pixels, and hold the features and the probabilities side by side (a cache hit
needs no pass at all); they never mix with a ``.keras`` model's entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tltf.errors import TltfError, first_line

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
    from tltf.extras import training_stack

    training_stack(f"--model {path}")
    from tltf.models.classifier import class_names_of
    from tltf.models.loading import load_model
    from tltf.strategies.features import feature_extractor, fingerprint

    model = load_model(path, option="--model")
    try:
        extractor = feature_extractor(model)
        names = class_names_of(model)
    except (ValueError, KeyError) as e:
        first = first_line(e, 120)
        raise TltfError(f"--model {path}: not a tltf classifier ({first})") from None
    size = tuple(int(s) for s in model.input_shape[1:3])
    _check_image_size(image_size, size)
    return FeatureSource(model, extractor, fingerprint(model) if cache else None,
                         {"model": str(path), "image_size": list(size), "dims": int(extractor.output_shape[-1])},
                         list(names))


def from_backbone(backbone: str, weights: str, image_size: int | None = None, cache: bool = True,
                  seed: int = 0) -> FeatureSource:
    """The pooled features of a pretrained ``backbone`` with ``weights`` (``--backbone`` / ``--weights``).

    ``seed`` seeds Keras (``keras.utils.set_random_seed``) before the build, so that ``--weights none`` (random
    features, e.g. for a quick check) gives the same extractor, and the same p-values, on every run."""
    from tltf.extras import training_stack

    training_stack(f"--backbone {backbone}")
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


def _check_image_size(image_size: int | None, size: tuple[int, int]) -> None:
    if image_size is not None and (image_size, image_size) != tuple(size):
        raise TltfError(f"--image-size {image_size}: the model takes {size[0]}x{size[1]} images; leave it out with "
                        "--model")


@dataclass
class OnnxFeatureSource:
    """An exported tltf classifier (``model``: a :class:`tltf.runtime.onnx_model.OnnxModel` with a features output)
    as a drift check's feature source, with the interface of :class:`FeatureSource`; no TensorFlow."""

    model: object  # tltf.runtime.onnx_model.OnnxModel
    key: str | None
    description: dict
    class_names: list[str] | None
    _probabilities: list = field(default_factory=list, repr=False)  # (features, their probabilities) computed

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.model.image_size)

    @property
    def dims(self) -> int:
        return int(self.description["dims"])

    def features(self, images, batch_size: int = 32, cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Features ``(N, D)`` and labels ``(N,)`` of an :class:`tltf.drift.images.ImageSet`, from one onnxruntime
        pass per batch (or the cache), which also gives their class probabilities (:meth:`probabilities`)."""
        from tltf.drift.images import pixel_batches
        from tltf.strategies.features import cached_features

        def extract():
            def run(pixels):
                return np.concatenate(self.model.features_and_probabilities(pixels, batch_size), axis=1)

            return run, self.dims + len(self.class_names or ())

        result = cached_features(pixel_batches(images, self.image_size, batch_size), self.key if cache else None,
                                 extract)
        if result.x.shape[1] != self.dims + len(self.class_names or ()):
            raise TltfError(f"--model {self.model.path}: the graph's outputs are {result.x.shape[1]} columns wide, not "
                            f"{self.dims} features + {len(self.class_names or ())} class probabilities")
        x, probabilities = result.x[:, :self.dims], result.x[:, self.dims:]
        self._probabilities.append((x, probabilities))
        return x, result.y

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """The class probabilities ``(N, K)`` computed with ``features`` (an array :meth:`features` returned)."""
        for seen, probabilities in self._probabilities:
            if seen is features:
                return probabilities
        raise TltfError("class probabilities: only for features this .onnx source computed")


def from_onnx(path: str, image_size: int | None = None, cache: bool = True) -> OnnxFeatureSource:
    """The ``features`` output and probabilities of the exported tltf classifier at ``path`` (``--model
    FILE.onnx``); a file without a features output is a one-line error saying how to re-export it."""
    from pathlib import Path

    from tltf.runtime.onnx_model import OnnxModel

    if not Path(path).is_file():
        raise TltfError(f"--model {path}: no such model file")
    model = OnnxModel(path)
    if model.features_output is None:
        raise TltfError(f"--model {path}: the file has no features output; re-export it with "
                        "tltf export MODEL.keras --onnx --features")
    if not model.class_names:
        raise TltfError(f"--model {path}: the file's metadata has no class_names (not a tltf export)")
    _check_image_size(image_size, model.image_size)
    dims = next(o.shape[-1] for o in model.session.get_outputs() if o.name == model.features_output)
    if not isinstance(dims, int) or dims < 1:
        try:
            dims = int(model.metadata.get("features_dims", ""))
        except ValueError:
            raise TltfError(f"--model {path}: the width of its features output is unknown") from None
    key = None
    if cache:
        from tltf.export.onnx import file_sha256

        key = f"onnx:{file_sha256(path)}:features+probabilities"
    return OnnxFeatureSource(model, key, {"model": str(path), "image_size": list(model.image_size), "dims": dims},
                             list(model.class_names))
