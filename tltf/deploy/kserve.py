"""A KServe ``InferenceService`` that serves a Triton model repository (:mod:`tltf.deploy.triton`) with KServe's
Triton runtime (``kserve-tritonserver``, Open Inference Protocol v2), and its check against KServe's SDK models.

``storageUri`` is the repository's root (the folder holding ``NAME/config.pbtxt``) once copied to storage the
cluster reads (``gs://``, ``s3://``, ``pvc://``...); Triton then serves ``/v2/models/NAME/infer``, the same route
and the same tritonclient code as ``tltf serve --model-repository``.

**Checked against KServe's Python SDK models, without the SDK.** ``pip install kserve`` (0.21.0) was measured
here: 37 packages (kubernetes, fastapi, grpcio-tools, cryptography, aiohttp, ...) and it pins ``protobuf<7``,
``psutil<6`` and ``pandas<3``, which would *downgrade* protobuf 7.36.2 (used by TensorFlow, onnx and
onnxruntime) to 6.33.6 and psutil 7.2.2 to 5.9.8, and conflict with Ray Data's pandas 3. So the SDK's own model
tables -- every field's JSON key and type, and its required fields, of ``V1beta1InferenceService`` and all it
reaches -- were read out of the SDK's generated model files (:mod:`tltf.deploy.kserve_sdk_extract`, no SDK code
run) into :mod:`tltf.deploy.kserve_types`, and :func:`validate` walks a manifest through them as the SDK's
deserialiser does, but strictly: an unknown key (a typo: ``storageURI``), a wrong type or a missing required
field is an error naming its path. Kubernetes' own types (``V1ObjectMeta``, ``V1ResourceRequirements``) are
checked for the few keys written here.

>>> manifest = inference_service("flowers", "gs://bucket/repo")
>>> validate(manifest)
>>> manifest["spec"]["predictor"]["model"]["runtime"]
'kserve-tritonserver'
"""

from __future__ import annotations

import json
import re

from tltf.errors import TltfError

API_VERSION = "serving.kserve.io/v1beta1"
RUNTIME = "kserve-tritonserver"
#: Kubernetes object names: a DNS-1123 label (KServe also uses it in the service's host name)
DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
#: the resources of one predictor pod: a starting point to edit, not measured on a cluster (none was at hand)
RESOURCES = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}}

#: Kubernetes types the SDK tables refer to, with the keys written here (others pass as objects)
KUBERNETES = {"V1ObjectMeta": {"name": "str", "namespace": "str", "labels": "dict(str, str)",
                               "annotations": "dict(str, str)"},
              "V1ResourceRequirements": {"limits": "dict(str, str)", "requests": "dict(str, str)"}}


def service_name(name: str) -> str:
    """``name`` as a Kubernetes object name (lower case, ``_``/``.`` as ``-``); a one-line error if it cannot be."""
    value = re.sub(r"[_.]", "-", name.lower())
    if not DNS_LABEL.match(value) or len(value) > 63:
        raise TltfError(f"--name {name!r}: an InferenceService name is a DNS label (a-z, 0-9, '-', starting with a "
                        "letter, at most 63 characters)")
    return value


def inference_service(name: str, storage_uri: str, namespace: str | None = None, min_replicas: int = 1,
                      max_replicas: int | None = None) -> dict:
    """The ``InferenceService`` serving the Triton repository at ``storage_uri`` (its root) with KServe's Triton
    runtime; ``name`` becomes the service's name (a DNS label)."""
    if not storage_uri or not re.match(r"^[a-z][a-z0-9+.-]*://\S+$", storage_uri):
        raise TltfError(f"--storage-uri {storage_uri!r}: expected a URI the cluster reads (gs://, s3://, pvc://, "
                        "https://...)")
    metadata = {"name": service_name(name), **({"namespace": namespace} if namespace else {}),
                "annotations": {"serving.kserve.io/deploymentMode": "RawDeployment"}}
    predictor = {"minReplicas": int(min_replicas), **({"maxReplicas": int(max_replicas)} if max_replicas else {}),
                 "model": {"modelFormat": {"name": "onnx", "version": "1"}, "runtime": RUNTIME,
                           "protocolVersion": "v2", "storageUri": storage_uri, "resources": RESOURCES}}
    return {"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": metadata,
            "spec": {"predictor": predictor}}


_SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str,
            "date": str}


def _check(value, kind: str, where: str) -> None:
    from tltf.deploy.kserve_types import MODELS

    if kind.startswith("list["):
        if not isinstance(value, list):
            raise TltfError(f"{where}: expected a list, got {type(value).__name__}")
        for n, item in enumerate(value):
            _check(item, kind[5:-1], f"{where}[{n}]")
        return
    if kind.startswith("dict("):
        if not isinstance(value, dict):
            raise TltfError(f"{where}: expected a mapping, got {type(value).__name__}")
        inner = kind[5:-1].split(", ", 1)[1]
        for key, item in value.items():
            _check(item, inner, f"{where}.{key}")
        return
    if kind in _SCALARS:
        wanted = _SCALARS[kind]
        if isinstance(value, bool) and kind in ("int", "float") or not isinstance(value, wanted):
            raise TltfError(f"{where}: expected {kind}, got {type(value).__name__} {json.dumps(value)[:40]}")
        return
    fields = MODELS[kind]["fields"] if kind in MODELS else KUBERNETES.get(kind)
    if not isinstance(value, dict):
        raise TltfError(f"{where}: expected a {kind} mapping, got {type(value).__name__}")
    if fields is None:
        return  # another Kubernetes type: not written here
    for key, item in value.items():
        if key not in fields:
            raise TltfError(f"{where}: {kind} has no field {key!r} (KServe SDK model)")
        _check(item, fields[key], f"{where}.{key}")
    for key in MODELS.get(kind, {}).get("required", []):
        if key not in value:
            raise TltfError(f"{where}: {kind} requires {key!r}")


def validate(manifest: dict) -> None:
    """Check ``manifest`` against KServe's ``V1beta1InferenceService`` (see the module doc) and what the cluster
    needs besides: the API version and kind, a name, a predictor with a storage URI. A one-line error names the
    first problem's path."""
    _check(manifest, "V1beta1InferenceService", "InferenceService")
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != "InferenceService":
        raise TltfError(f"InferenceService: apiVersion/kind must be {API_VERSION} InferenceService")
    name = (manifest.get("metadata") or {}).get("name", "")
    if not DNS_LABEL.match(name):
        raise TltfError(f"InferenceService.metadata.name {name!r}: not a DNS label")
    model = ((manifest.get("spec") or {}).get("predictor") or {}).get("model") or {}
    if not model.get("storageUri") or not (model.get("modelFormat") or {}).get("name"):
        raise TltfError("InferenceService.spec.predictor.model: needs modelFormat.name and storageUri")


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML of plain values; strings double-quoted (JSON escapes are YAML's too)."""
    pad, lines = "  " * indent, []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        head = f"{pad}{key}:" if isinstance(value, dict) else f"{pad}-"
        if isinstance(item, (dict, list)) and item:
            lines.append(head)
            lines.append(to_yaml(item, indent + 1).rstrip("\n"))
        else:
            lines.append(f"{head} {json.dumps(item)}")
    return "\n".join(lines) + "\n"


def write_manifest(path, manifest: dict) -> None:
    """Validate ``manifest`` and write it as YAML to ``path`` (atomically)."""
    from tltf.atomic import replacing

    validate(manifest)
    with replacing(path) as tmp:
        tmp.write_text("# KServe InferenceService written by tltf package (kubectl apply -f this file)\n"
                       + to_yaml(manifest))
