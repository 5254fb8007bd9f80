"""The Open Inference Protocol's (KServe v2) infer messages <-> numpy: parsing requests, encoding responses.

A request is a JSON object ``{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype", "data" |
"parameters": {"binary_data_size"}}], "outputs"?: [{"name", "parameters"?: {"binary_data", "classification"}}]}``.
With the *binary tensor data* extension (what ``tritonclient`` sends by default) the JSON is followed by the raw
little-endian bytes of the inputs that declare ``binary_data_size``, in order, and the header
``Inference-Header-Content-Length`` says where the JSON ends; outputs asked for with ``binary_data`` (or all of
them with the request parameter ``binary_data_output``) come back the same way. The *classification* extension
(``"classification": k`` on an output) returns, per row, the ``k`` best ``"score:index:label"`` strings.

Everything here is strict and says what is wrong in one line (:class:`ApiError`, status 400): a datatype that does
not exist, a shape that is not a list of non-negative integers, data whose element count does not match the shape,
values that do not fit the datatype (strings for FP32, 1.5 or 300 for INT8), binary sizes that do not add up.
Whether the tensors fit a model (names, datatypes, shapes) is :mod:`tltf.serve.models`' business.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from tltf.runtime.outputs import top_k
from tltf.serve.errors import ApiError

#: v2 datatype -> numpy dtype (BYTES and BF16 inputs are not supported: no tltf model takes them)
DATATYPES: dict[str, np.dtype] = {name: np.dtype(t) for name, t in {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}.items()}
#: numpy dtype -> v2 datatype
NUMPY_TO_V2 = {dtype: name for name, dtype in DATATYPES.items()}
#: onnxruntime's type strings -> v2 datatype
ORT_TO_V2 = {"tensor(bool)": "BOOL", "tensor(uint8)": "UINT8", "tensor(uint16)": "UINT16",
             "tensor(uint32)": "UINT32", "tensor(uint64)": "UINT64", "tensor(int8)": "INT8",
             "tensor(int16)": "INT16", "tensor(int32)": "INT32", "tensor(int64)": "INT64",
             "tensor(float16)": "FP16", "tensor(float)": "FP32", "tensor(double)": "FP64",
             "tensor(string)": "BYTES", "tensor(bfloat16)": "BF16"}
#: no tensor's shape may describe more bytes than this (with its zero dimensions left out: numpy cannot make
#: an array of shape [0, 2**40, 2**40] either), whatever its data
MAX_TENSOR_BYTES = 1 << 40
#: the header that says how many bytes of the body are JSON (binary tensor data extension)
HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass
class RequestedOutput:
    """One output a request asks for: as binary data or JSON (``binary=None``: as the request's
    ``binary_data_output`` says), or as its top ``classification`` strings."""

    name: str
    binary: bool | None = None
    classification: int = 0


@dataclass
class InferRequest:
    """A parsed infer request: input arrays by name, in request order; ``outputs=None`` asks for all of them."""

    inputs: dict[str, np.ndarray]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    parameters: dict = field(default_factory=dict)  # the request's own (``timeout``, ``binary_data_output``, ...)


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Parse an infer request body (JSON, or JSON + binary tensor data when ``header_length`` is given)."""
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise ApiError(400, f"{HEADER_LENGTH} {header_length[:40]!r} is not a number") from None
        if not 0 < json_size <= len(body):
            raise ApiError(400, f"{HEADER_LENGTH} {json_size} is outside the {len(body)}-byte body")
        header, binary = body[:json_size], memoryview(body)[json_size:]
    else:
        header, binary = body, memoryview(b"")
    message = _load_json(header)
    if not isinstance(message, dict):
        raise ApiError(400, f"the request must be a JSON object, got {_json_kind(message)}")
    inputs = message.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ApiError(400, "the request has no 'inputs' (a non-empty list of tensors)")
    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(inputs):
        name, array, used = _parse_input(i, tensor, binary, offset)
        if name in arrays:
            raise ApiError(400, f"input {name!r} is given twice")
        arrays[name] = array
        offset += used
    if offset != len(binary):
        raise ApiError(400, f"the inputs declare {offset} bytes of binary data but the body carries {len(binary)}")
    parameters = message.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "'parameters' must be a JSON object")
    request_id = message.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise ApiError(400, "'id' must be a string")
    return InferRequest(arrays, request_id, _parse_outputs(message.get("outputs")),
                        bool(parameters.get("binary_data_output", False)), parameters)


def _load_json(data: bytes):
    try:
        return json.loads(data)
    except UnicodeDecodeError:
        raise ApiError(400, "the request is not UTF-8 JSON (binary data needs the "
                            f"{HEADER_LENGTH} header)") from None
    except ValueError as e:
        raise ApiError(400, f"malformed JSON ({e})") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON (nested too deeply)") from None


def _json_kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _parse_input(i: int, tensor, binary: memoryview, offset: int) -> tuple[str, np.ndarray, int]:
    """``(name, array, binary bytes used)`` of the ``i``-th input tensor of a request."""
    if not isinstance(tensor, dict):
        raise ApiError(400, f"inputs[{i}] must be a JSON object, got {_json_kind(tensor)}")
    name = tensor.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"inputs[{i}] has no 'name'")
    datatype = tensor.get("datatype")
    if datatype not in DATATYPES:
        known = ", ".join(DATATYPES)
        raise ApiError(400, f"input {name!r}: datatype {str(datatype)[:20]!r} is not supported ({known})")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ApiError(400, f"input {name!r}: 'shape' must be a list of non-negative integers, got "
                            f"{json.dumps(shape)[:60]}")
    count = math.prod(shape)
    dtype = DATATYPES[datatype]
    if math.prod(d for d in shape if d) * dtype.itemsize > MAX_TENSOR_BYTES:  # numpy refuses such a shape even
        raise ApiError(400, f"input {name!r}: shape {json.dumps(shape)[:60]} is too large")  # with a zero in it
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ApiError(400, f"input {name!r}: 'parameters' must be a JSON object")
    if "shared_memory_region" in parameters:
        raise ApiError(400, f"input {name!r}: shared memory is not supported")
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise ApiError(400, f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise ApiError(400, f"input {name!r}: binary_data_size {size} does not match shape {shape} of "
                                f"{datatype} ({count * dtype.itemsize} bytes)")
        if offset + size > len(binary):
            raise ApiError(400, f"input {name!r}: its {size} bytes of binary data are missing from the body")
        array = np.frombuffer(binary[offset:offset + size], dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
        return name, array.reshape(shape), size
    if "data" not in tensor:
        raise ApiError(400, f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    return name, _json_array(name, tensor["data"], datatype, shape, count), 0


def _json_array(name: str, data, datatype: str, shape: list[int], count: int) -> np.ndarray:
    """A JSON ``data`` list (flat or nested, row-major) as an array of ``datatype`` and ``shape``, checked."""
    dtype = DATATYPES[datatype]
    if not isinstance(data, list):
        raise ApiError(400, f"input {name!r}: 'data' must be a list")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise ApiError(400, f"input {name!r}: 'data' is not a list of numbers (ragged or mixed)") from None
    if raw.size and raw.dtype.kind not in "biuf":
        raise ApiError(400, f"input {name!r}: 'data' must hold numbers for {datatype}, got {raw.dtype.kind!r} "
                            "values (strings? null?)")
    if raw.size != count:
        raise ApiError(400, f"input {name!r}: {raw.size} values do not fill shape {shape} ({count} values)")
    if dtype.kind in "iu" and raw.size:
        if raw.dtype.kind == "f":
            raise ApiError(400, f"input {name!r}: {datatype} data must be integers")
        info = np.iinfo(dtype)
        if raw.min() < info.min or raw.max() > info.max:
            raise ApiError(400, f"input {name!r}: values outside {datatype}'s range [{info.min}, {info.max}]")
    if dtype.kind == "b" and raw.size and raw.dtype.kind != "b" and not np.isin(raw, (0, 1)).all():
        raise ApiError(400, f"input {name!r}: BOOL data must be true/false (or 0/1)")
    with np.errstate(over="ignore"):  # 1e40 as FP32 is inf, as numpy and onnxruntime would have it
        return raw.astype(dtype).reshape(shape)


def _parse_outputs(outputs) -> list[RequestedOutput] | None:
    if outputs is None:
        return None
    if not isinstance(outputs, list):
        raise ApiError(400, "'outputs' must be a list")
    requested = []
    for i, item in enumerate(outputs):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ApiError(400, f"outputs[{i}] must be an object with a 'name'")
        parameters = item.get("parameters") or {}
        if not isinstance(parameters, dict):
            raise ApiError(400, f"output {item['name']!r}: 'parameters' must be a JSON object")
        if "shared_memory_region" in parameters:
            raise ApiError(400, f"output {item['name']!r}: shared memory is not supported")
        k = parameters.get("classification", 0)
        if type(k) is not int or k < 0:
            raise ApiError(400, f"output {item['name']!r}: classification must be a non-negative integer")
        binary = parameters.get("binary_data")
        requested.append(RequestedOutput(item["name"], None if binary is None else bool(binary), k))
    return requested


# --- responses -------------------------------------------------------------------------------------------------

def classification(values: np.ndarray, k: int, class_names=None) -> np.ndarray:
    """The classification extension: per row of ``(batch, classes)`` scores, the ``k`` best as
    ``b"score:index:label"`` (``b"score:index"`` without class names), an object array ``(batch, k)``."""
    scores = np.asarray(values)
    if scores.ndim != 2 or scores.shape[1] < 1:
        raise ApiError(400, f"classification needs a (batch, classes) output, this one has shape {scores.shape}")
    rows = top_k(scores, class_names, k)
    return np.array([[(f"{t['score']:f}:{t['index']}" + (f":{t['label']}" if t["label"] is not None else ""))
                      .encode() for t in row] for row in rows], dtype=object).reshape(len(rows), -1)


def encode_infer_response(model_name: str, request_id: str | None,
                          outputs: list[tuple[str, np.ndarray, bool]]) -> tuple[bytes, dict[str, str]]:
    """``(body, headers)`` of an infer response for ``[(name, array, binary?)]``; an object array is BYTES.

    Binary outputs follow the JSON in order and the header ``Inference-Header-Content-Length`` says where the
    JSON ends; without any binary output the body is plain JSON."""
    tensors, blobs = [], []
    for name, array, binary in outputs:
        is_bytes = array.dtype == object
        tensor = {"name": name, "datatype": "BYTES" if is_bytes else NUMPY_TO_V2[array.dtype],
                  "shape": [int(d) for d in array.shape]}
        if binary:
            blob = _bytes_tensor(array) if is_bytes else np.ascontiguousarray(array, array.dtype.newbyteorder("<"))
            blob = blob if isinstance(blob, bytes) else blob.tobytes()
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = [b.decode("utf-8", "replace") for b in array.ravel()] if is_bytes else \
                array.ravel().tolist()
        tensors.append(tensor)
    message = {"model_name": model_name, "model_version": "1", "outputs": tensors}
    if request_id is not None:
        message["id"] = request_id
    header = json.dumps(message, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *blobs]), {"Content-Type": "application/octet-stream",
                                        HEADER_LENGTH: str(len(header))}


def _bytes_tensor(array: np.ndarray) -> bytes:
    """BYTES elements as the binary extension has them: each a 4-byte little-endian length, then the bytes."""
    return b"".join(struct.pack("<I", len(b)) + b for b in array.ravel())
