"""Convert torchvision ImageNet checkpoints into complete tltf Keras classifiers (``tltf weights import``).

The result is exactly what :func:`tltf.models.classifier.build_classifier` builds for the registry backbone --
``pixels -> Preprocess("torch") -> <backbone> -> ClassifierHead(1000 ImageNet names)`` -- with the torchvision
tensors copied in, so ``tltf predict`` runs it and ``tltf fit --weights imported.keras`` starts from its backbone.
What makes the weights correct in Keras is recorded in the ``.keras`` file itself:

- every BatchNormalization epsilon is set to torchvision's 1e-5 (Keras Applications use 1e-3; with 1e-3 the
  converted MobileNetV2 gets 0/20 ImageNet photos right);
- the input normalisation is torchvision's ``(x/255 - mean) / std`` (the ``Preprocess`` layer in ``torch`` mode).

Layouts: convolutions OIHW -> HWIO, depthwise convolutions (C,1,H,W) -> (H,W,C,1), Linear (out,in) -> Dense (in,out).

Checking is strict: a tensor the architecture does not have, a wrong shape or a missing tensor is refused with a
:class:`TltfError` naming the first offending tensor (in file order), and no file is written.

**MobileNetV2 exactness.** The function is torchvision's except at the border of stride-2 convolutions on even
input sizes: torchvision pads them (1,1), Keras (0,1) ("same" / ``correct_pad``), a one-pixel shift. At odd input
sizes (e.g. ``--image-size 225``) both pad (1,1) and the Keras model computes exactly torchvision's function.

**ResNet-50 is not supported** (see :data:`NOT_SUPPORTED`): torchvision's ResNet-50 is "v1.5" (the stride-2 of each
downsampling bottleneck sits on its 3x3 convolution) while ``keras.applications.ResNet50`` is v1 (stride on the first
1x1). In Keras' layout the 1x1 convolution discards three quarters of the positions before the 3x3 convolution sees
them; no mapping of weights makes the two functions equal, so an import onto the registry's ``resnet50`` could never
be exact, and an exact import would need a backbone that is not the registry's -- whose weights ``--weights`` would
then copy, shape for shape, into the v1 network with a silently different function.

>>> model = import_torchvision("mobilenet_v2-b0353104.pth", "mobilenet_v2", "mnv2.keras")  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from tltf.atomic import save_model
from tltf.errors import TltfError

TORCH_BN_EPSILON = 1e-5

# kind of a mapped layer -> torch parameter names (in state_dict order) and how each becomes a Keras weight
_CONV, _DEPTHWISE, _BN, _DENSE = "conv", "depthwise", "bn", "dense"
_TORCH_PARAMS = {
    _CONV: ("weight",),
    _DEPTHWISE: ("weight",),
    _BN: ("weight", "bias", "running_mean", "running_var"),
    _DENSE: ("weight", "bias"),
}
_TO_KERAS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    _CONV: lambda w: w.transpose(2, 3, 1, 0),       # OIHW -> HWIO
    _DEPTHWISE: lambda w: w.transpose(2, 3, 0, 1),  # (C,1,H,W) -> (H,W,C,1)
    _DENSE: lambda w: w.T,                           # (out,in) -> (in,out)
}
_TO_TORCH_SHAPE = {
    _CONV: lambda s: (s[3], s[2], s[0], s[1]),
    _DEPTHWISE: lambda s: (s[2], s[3], s[0], s[1]),
    _DENSE: lambda s: (s[1], s[0]),
}


@dataclass(frozen=True)
class ArchSpec:
    """A torchvision architecture that converts exactly onto a registry backbone."""

    arch: str
    backbone: str
    layers: Callable[[], list[tuple[str, str, str]]]  # [(torch module prefix, keras layer name, kind)]
    checkpoint: str  # the torchvision file this was verified with
    note: str


def _mobilenet_v2_layers() -> list[tuple[str, str, str]]:
    out = [("features.0.0", "Conv1", _CONV), ("features.0.1", "bn_Conv1", _BN),
           ("features.1.conv.0.0", "expanded_conv_depthwise", _DEPTHWISE),
           ("features.1.conv.0.1", "expanded_conv_depthwise_BN", _BN),
           ("features.1.conv.1", "expanded_conv_project", _CONV),
           ("features.1.conv.2", "expanded_conv_project_BN", _BN)]
    for block in range(1, 17):
        f, k = f"features.{block + 1}.conv", f"block_{block}"
        out += [(f"{f}.0.0", f"{k}_expand", _CONV), (f"{f}.0.1", f"{k}_expand_BN", _BN),
                (f"{f}.1.0", f"{k}_depthwise", _DEPTHWISE), (f"{f}.1.1", f"{k}_depthwise_BN", _BN),
                (f"{f}.2", f"{k}_project", _CONV), (f"{f}.3", f"{k}_project_BN", _BN)]
    out += [("features.18.0", "Conv_1", _CONV), ("features.18.1", "Conv_1_bn", _BN),
            ("classifier.1", "head", _DENSE)]
    return out


SUPPORTED: dict[str, ArchSpec] = {
    "mobilenet_v2": ArchSpec(
        "mobilenet_v2", "mobilenet_v2", _mobilenet_v2_layers, "mobilenet_v2-b0353104.pth",
        "exact at odd input sizes; at even sizes Keras pads stride-2 convs (0,1) where torch pads (1,1)"),
}

NOT_SUPPORTED: dict[str, str] = {
    "resnet50": "torchvision ResNet-50 is v1.5 (stride on the 3x3 conv); Keras ResNet50 is v1 (stride on the "
                "first 1x1): no weight mapping makes them equal",
}

HEAD_LAYER = "head"


def arch_spec(arch: str) -> ArchSpec:
    """The spec of a supported architecture; anything else is a one-line error naming ``--arch``."""
    key = arch.strip().lower().replace("-", "_")
    if key in SUPPORTED:
        return SUPPORTED[key]
    if key in NOT_SUPPORTED:
        raise TltfError(f"--arch {arch}: not supported ({NOT_SUPPORTED[key]})")
    raise TltfError(f"--arch {arch}: not supported; supported: {', '.join(SUPPORTED)} (see `tltf weights list`)")


def _build(spec: ArchSpec, image_size) -> keras.Model:
    from tltf.models.classifier import backbone_of, build_classifier
    from tltf.weights.imagenet import imagenet_class_names

    model = build_classifier(spec.backbone, imagenet_class_names(), image_size, weights="none", dropout=0.2,
                             preprocess="torch")
    for layer in backbone_of(model).layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon = TORCH_BN_EPSILON
    return model


def _target_layer(model: keras.Model, name: str):
    from tltf.models.classifier import backbone_of, head_of

    return head_of(model).dense if name == HEAD_LAYER else backbone_of(model).get_layer(name)


def expected_shapes(spec: ArchSpec, model: keras.Model) -> dict[str, tuple[int, ...]]:
    """``{torch tensor name: torch shape}`` for every tensor the converter needs (file order of torchvision)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for prefix, layer_name, kind in spec.layers():
        weights = _target_layer(model, layer_name).get_weights()
        for i, param in enumerate(_TORCH_PARAMS[kind]):
            shape = tuple(weights[i].shape)
            if param == "weight" and kind in _TO_TORCH_SHAPE:
                shape = _TO_TORCH_SHAPE[kind](shape)
            shapes[f"{prefix}.{param}"] = shape
    return shapes


def check_state_dict(state: dict[str, np.ndarray], spec: ArchSpec, model: keras.Model, source: str) -> None:
    """Refuse, naming the first offending tensor, a state_dict that is not exactly ``spec``'s architecture."""
    expected = expected_shapes(spec, model)
    bn_prefixes = {prefix for prefix, _, kind in spec.layers() if kind == _BN}
    for key, value in state.items():
        if key in expected:
            if tuple(value.shape) != expected[key]:
                raise TltfError(f"{source}: tensor {key} has shape {tuple(value.shape)}, expected {expected[key]} "
                                f"for torchvision {spec.arch}")
        elif not (key.endswith(".num_batches_tracked") and key.rsplit(".", 1)[0] in bn_prefixes
                  and value.size == 1):
            raise TltfError(f"{source}: unexpected tensor {key} for torchvision {spec.arch}")
    for key in expected:
        if key not in state:
            raise TltfError(f"{source}: missing tensor {key} for torchvision {spec.arch}")


def convert(state: dict[str, np.ndarray], arch: str, image_size=224, source: str = "checkpoint") -> keras.Model:
    """A tltf ImageNet classifier holding the torchvision ``state`` (checked strictly first, see module doc)."""
    spec = arch_spec(arch)
    model = _build(spec, image_size)
    check_state_dict(state, spec, model, source)
    for prefix, layer_name, kind in spec.layers():
        values = [np.asarray(state[f"{prefix}.{p}"], dtype=np.float32) for p in _TORCH_PARAMS[kind]]
        if kind in _TO_KERAS:
            values[0] = _TO_KERAS[kind](values[0])
        _target_layer(model, layer_name).set_weights([np.ascontiguousarray(v) for v in values])
    return model


def import_torchvision(pth: str | Path, arch: str, out: str | Path, image_size=224) -> keras.Model:
    """Read ``pth`` (torch ``.pth``, either format), convert it, and save the classifier to ``out`` (``.keras``).

    The file is written to a temporary name in the same folder and renamed, so a failure leaves nothing behind.
    """
    from tltf.weights.pth import read_pth

    out = Path(out)
    if out.suffix != ".keras":
        raise TltfError(f"--out {out}: must end in .keras")
    if not out.parent.is_dir():
        raise TltfError(f"--out {out}: folder {out.parent} does not exist")
    arch_spec(arch)  # refuse an unknown --arch before reading anything
    model = convert(read_pth(pth), arch, image_size, source=str(pth))
    save_model(model, out)
    return model


