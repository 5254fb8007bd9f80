"""The backbone registry: every ``keras.applications`` model by a snake_case name.

Each :class:`BackboneSpec` knows how to build the headless network, the input normalisation its ImageNet weights
expect (see :mod:`tltf.models.preprocess`), its default and minimum input size, and how to cut it into an ordered
list of **blocks** (layer groups from input to output). Staged fine-tuning unfreezes blocks from the top down.

>>> spec = get("mobilenet_v2")
>>> spec.default_size, spec.preprocess
(224, 'tf')
>>> net = spec.build(96, weights="none")                   # doctest: +SKIP
>>> [name for name, _ in spec.blocks(net)][-3:]            # doctest: +SKIP
['block_15', 'block_16', 'top']
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable

import keras

from tltf.errors import TltfError, first_line
from tltf.models.small_cnn import small_cnn

A = keras.applications

# A key function maps a layer name to its block key, or None to inherit the previous layer's key.
KeyFn = Callable[[str], "str | None"]


def _by_key(pattern: str, rename: Callable[[re.Match], str] | None = None, leading: str = "stem") -> KeyFn:
    """Block key from a regex match on the layer name; unmatched layers inherit the previous key."""
    regex = re.compile(pattern)

    def key(name: str) -> str | None:
        m = regex.search(name)
        if not m:
            return None
        return rename(m) if rename else m.group(1)

    key.leading = leading  # type: ignore[attr-defined]
    return key


def _by_boundary(pattern: str) -> KeyFn:
    """A block ends at each layer whose name matches; the block is named after that layer."""

    def key(name: str) -> str | None:  # group_blocks cuts at the boundary layers
        return None

    key.boundary = re.compile(pattern)  # type: ignore[attr-defined]
    return key


def group_blocks(model: keras.Model, key_fn: KeyFn) -> list[tuple[str, list[keras.layers.Layer]]]:
    """Split ``model.layers`` (topological order, input layer excluded) into consecutive named blocks."""
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    blocks: list[tuple[str, list]] = []
    boundary = getattr(key_fn, "boundary", None)
    if boundary is not None:
        current: list = []
        for layer in layers:
            current.append(layer)
            if boundary.search(layer.name):
                blocks.append((layer.name, current))
                current = []
        if current:  # trailing layers (e.g. a final activation) join the last block
            if blocks:
                blocks[-1][1].extend(current)
            else:
                blocks.append(("all", current))
        return blocks
    key = getattr(key_fn, "leading", "stem")
    for layer in layers:
        key = key_fn(layer.name) or key
        if blocks and blocks[-1][0] == key:
            blocks[-1][1].append(layer)
        else:
            blocks.append((key, [layer]))
    return blocks


_MOBILENET_V1 = _by_key(r"^conv_(?:dw|pw|pad)_(\d+)", lambda m: f"block_{int(m.group(1))}")
_MOBILENET_V2 = _by_key(r"^(?:block_(\d+)|(expanded_conv)|(Conv_1|out_relu))",
                        lambda m: "top" if m.group(3) else f"block_{int(m.group(1) or 0)}")
_MOBILENET_V3 = _by_key(r"^(?:expanded_conv(?:_(\d+))?_|(conv_1))",
                        lambda m: "top" if m.group(2) else f"block_{int(m.group(1) or 0)}")
_RESNET = _by_key(r"^(conv\d|pool\d|post)_", lambda m: {"conv1": "stem", "pool1": "stem", "post": "conv5"}
                  .get(m.group(1), m.group(1)))
_DENSENET = _by_key(r"^(?:conv(\d)|pool(\d)|(bn|relu)$)",
                    lambda m: "stem" if (m.group(1) or m.group(2)) == "1"
                    else f"dense{m.group(1) or m.group(2) or '5'}")
_EFFICIENTNET = _by_key(r"^(?:block(\d)|(top)_)", lambda m: "top" if m.group(2) else f"stage{m.group(1)}")
_CONVNEXT = _by_key(r"(?:stage_(\d)|downsampling_block_(\d)|(layer_normalization))",
                    lambda m: "stage3" if m.group(3) else
                    f"stage{m.group(1) if m.group(1) is not None else int(m.group(2)) + 1}")
_VGG_XCEPTION = _by_key(r"^block(\d+)_", lambda m: f"block{m.group(1)}")
_INCEPTION_V3 = _by_boundary(r"^mixed\d+$")
_INCEPTION_RESNET_V2 = _by_boundary(r"^(mixed_5b|block35_10_ac|mixed_6a|block17_20_ac|mixed_7a|block8_10|conv_7b_ac)$")
_NASNET = _by_boundary(r"^(normal|reduction)_concat")


@dataclass(frozen=True)
class BackboneSpec:
    """What tltf knows about one Keras Applications backbone."""

    name: str
    constructor: Callable[..., keras.Model]
    preprocess: str
    default_size: int
    key_fn: KeyFn = field(repr=False)
    min_size: int = 32
    params: int = 0  # trainable + non-trainable parameters without the top, measured (see benchmarks)
    family: str = ""
    kwargs: dict = field(default_factory=dict)

    def build(self, image_size: int | tuple[int, int] | None = None, weights: str | None = "imagenet") -> keras.Model:
        """The headless backbone for RGB inputs of ``image_size`` with Keras' ``imagenet`` weights or none.

        Weights files and named weight sets (``--weights``) are :func:`tltf.models.transfer.build_backbone`'s.
        Raises :class:`TltfError` (one line, naming the option) for an image size the network refuses or an
        ImageNet download that fails.
        """
        if weights not in ("imagenet", "none", None):
            raise ValueError(f"BackboneSpec.build takes weights 'imagenet' or 'none', not {weights!r}; "
                             "use tltf.models.transfer.build_backbone for files and named weights")
        h, w = _hw(image_size or self.default_size)
        if min(h, w) < self.min_size:
            raise TltfError(f"--image-size {h}x{w} is too small for {self.name} (minimum {self.min_size})")
        keras_weights = "imagenet" if weights == "imagenet" else None
        try:
            model = self.constructor(include_top=False, weights=keras_weights, input_shape=(h, w, 3),
                                     **self.kwargs)
        except TltfError:
            raise
        except ValueError as e:
            raise TltfError(f"--image-size {h}x{w}: {self.name} refuses it ({first_line(e)})") from None
        except Exception as e:  # a failed ImageNet download is an OSError/URLError/HTTPError/Exception
            if keras_weights:
                raise TltfError(f"--weights imagenet: could not fetch {self.name} ImageNet weights "
                                f"({first_line(e)}); use --weights none, a local file, or "
                                "`tltf weights import`") from None
            raise
        model.name = self.name  # EfficientNetV2 reads its block table from `name`, so rename after building
        return model

    @property
    def num_blocks(self) -> int:
        return BLOCK_COUNTS.get(self.name, 0)

    def blocks(self, model: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
        """Ordered ``(block_name, layers)`` from input to output."""
        return group_blocks(model, self.key_fn)


def _hw(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _spec(name, ctor, pre, size, key, **kw) -> BackboneSpec:
    return BackboneSpec(name=name, constructor=ctor, preprocess=pre, default_size=size, key_fn=key, **kw)


# Parameter counts without the top (include_top=False), measured with Keras 3.15 by benchmarks/backbone_params.py.
REGISTRY: dict[str, BackboneSpec] = {s.name: s for s in [
    _spec("mobilenet", A.MobileNet, "tf", 224, _MOBILENET_V1, params=3_228_864, family="mobilenet"),
    _spec("mobilenet_v2", A.MobileNetV2, "tf", 224, _MOBILENET_V2, params=2_257_984, family="mobilenet"),
    _spec("mobilenet_v3_small", A.MobileNetV3Small, "none", 224, _MOBILENET_V3, params=939_120, family="mobilenet",
          kwargs={"include_preprocessing": True}),
    _spec("mobilenet_v3_large", A.MobileNetV3Large, "none", 224, _MOBILENET_V3, params=2_996_352,
          family="mobilenet", kwargs={"include_preprocessing": True}),
    _spec("resnet50", A.ResNet50, "caffe", 224, _RESNET, params=23_587_712, family="resnet"),
    _spec("resnet101", A.ResNet101, "caffe", 224, _RESNET, params=42_658_176, family="resnet"),
    _spec("resnet152", A.ResNet152, "caffe", 224, _RESNET, params=58_370_944, family="resnet"),
    _spec("resnet50_v2", A.ResNet50V2, "tf", 224, _RESNET, params=23_564_800, family="resnet"),
    _spec("resnet101_v2", A.ResNet101V2, "tf", 224, _RESNET, params=42_626_560, family="resnet"),
    _spec("resnet152_v2", A.ResNet152V2, "tf", 224, _RESNET, params=58_331_648, family="resnet"),
    _spec("vgg16", A.VGG16, "caffe", 224, _VGG_XCEPTION, params=14_714_688, family="vgg"),
    _spec("vgg19", A.VGG19, "caffe", 224, _VGG_XCEPTION, params=20_024_384, family="vgg"),
    _spec("densenet121", A.DenseNet121, "torch", 224, _DENSENET, params=7_037_504, family="densenet"),
    _spec("densenet169", A.DenseNet169, "torch", 224, _DENSENET, params=12_642_880, family="densenet"),
    _spec("densenet201", A.DenseNet201, "torch", 224, _DENSENET, params=18_321_984, family="densenet"),
    *[_spec(f"efficientnet_b{i}", getattr(A, f"EfficientNetB{i}"), "none", size, _EFFICIENTNET, params=p,
            family="efficientnet")
      for i, size, p in [(0, 224, 4_049_571), (1, 240, 6_575_239), (2, 260, 7_768_569), (3, 300, 10_783_535),
                         (4, 380, 17_673_823), (5, 456, 28_513_527), (6, 528, 40_960_143),
                         (7, 600, 64_097_687)]],
    *[_spec(f"efficientnet_v2_{s.lower()}", getattr(A, f"EfficientNetV2{s}"), "none", size, _EFFICIENTNET,
            params=p, family="efficientnet_v2", kwargs={"include_preprocessing": True})
      for s, size, p in [("B0", 224, 5_919_312), ("B1", 240, 6_931_124), ("B2", 260, 8_769_374),
                         ("B3", 300, 12_930_622), ("S", 384, 20_331_360), ("M", 480, 53_150_388),
                         ("L", 480, 117_746_848)]],
    *[_spec(f"convnext_{s.lower()}", getattr(A, f"ConvNeXt{s}"), "none", 224, _CONVNEXT, params=p,
            family="convnext", kwargs={"include_preprocessing": True})
      for s, p in [("Tiny", 27_820_128), ("Small", 49_454_688), ("Base", 87_566_464), ("Large", 196_230_336),
                   ("XLarge", 348_147_968)]],
    _spec("inception_v3", A.InceptionV3, "tf", 299, _INCEPTION_V3, min_size=75, params=21_802_784,
          family="inception"),
    _spec("inception_resnet_v2", A.InceptionResNetV2, "tf", 299, _INCEPTION_RESNET_V2, min_size=75,
          params=54_336_736, family="inception"),
    _spec("xception", A.Xception, "tf", 299, _VGG_XCEPTION, min_size=71, params=20_861_480, family="xception"),
    _spec("nasnet_mobile", A.NASNetMobile, "tf", 224, _NASNET, params=4_269_716, family="nasnet"),
    _spec("nasnet_large", A.NASNetLarge, "tf", 331, _NASNET, params=84_916_818, family="nasnet"),
    # Not a Keras Application: the DANN paper's digit CNN, trained from scratch (--weights none).
    _spec("cnn_small", small_cnn, "tf", 28, _VGG_XCEPTION, min_size=16, params=117_780, family="cnn"),
    _spec("cnn_small_bn", small_cnn, "tf", 28, _VGG_XCEPTION, min_size=16, params=118_320, family="cnn",
          kwargs={"batchnorm": True}),
]}


# Blocks per backbone (measured with benchmarks/backbone_params.py; `tltf backbones` shows them without building).
BLOCK_COUNTS: dict[str, int] = {
    "mobilenet": 14, "mobilenet_v2": 19, "mobilenet_v3_small": 13, "mobilenet_v3_large": 17, "resnet50": 5,
    "resnet101": 5, "resnet152": 5, "resnet50_v2": 5, "resnet101_v2": 5, "resnet152_v2": 5, "vgg16": 5, "vgg19": 5,
    "densenet121": 5, "densenet169": 5, "densenet201": 5, "efficientnet_b0": 9, "efficientnet_b1": 9,
    "efficientnet_b2": 9, "efficientnet_b3": 9, "efficientnet_b4": 9, "efficientnet_b5": 9, "efficientnet_b6": 9,
    "efficientnet_b7": 9, "efficientnet_v2_b0": 8, "efficientnet_v2_b1": 8, "efficientnet_v2_b2": 8,
    "efficientnet_v2_b3": 8, "efficientnet_v2_s": 8, "efficientnet_v2_m": 9, "efficientnet_v2_l": 9,
    "convnext_tiny": 5, "convnext_small": 5, "convnext_base": 5, "convnext_large": 5, "convnext_xlarge": 5,
    "inception_v3": 11, "inception_resnet_v2": 6, "xception": 14, "nasnet_mobile": 16, "nasnet_large": 22,
    "cnn_small": 3, "cnn_small_bn": 3,
}


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> BackboneSpec:
    """The spec for ``name``; an unknown name is a one-line error suggesting the closest names."""
    key = name.strip().lower().replace("-", "_")
    if key in REGISTRY:
        return REGISTRY[key]
    close = difflib.get_close_matches(key, REGISTRY, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; see `tltf backbones` ({len(REGISTRY)} known)"
    raise TltfError(f"--backbone {name}: unknown backbone{hint}")
