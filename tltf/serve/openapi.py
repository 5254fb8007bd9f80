"""The server's routes as an OpenAPI 3.0 document, served at ``GET /v2/openapi.json``.

Written from the Open Inference Protocol's REST specification (KServe v2: ``kserve/open-inference-protocol``'s
``specification/protocol/inference_rest.md`` and its OpenAPI file): server and model health, server and model
metadata, and inference with ``$inference_request`` / ``$inference_response``, tensors as ``{name, shape,
datatype, parameters?, data}`` and errors as ``{"error": "<message>"}``; plus what tltf adds: the binary tensor data
extension's header, Triton's ``timeout`` parameter, ``/v1/models/{name}/predict`` (image files), ``/metrics``.

The ``name`` path parameter lists the models this server serves (as a framework's enum would), so that a client
generated from the document, or a fuzzer (``tests/test_serve_hostile.py`` runs schemathesis from it), reaches
them; every response a route can give is listed, the refusals with the error schema.
"""

from __future__ import annotations

ERROR = {"$ref": "#/components/schemas/error"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    meaning = {400: "malformed or mismatched request", 404: "no such model or version", 405: "method not allowed",
               408: "the request body did not arrive in time (--body-timeout-s)",
               413: "body over --max-body-mb", 415: "unsupported Content-Encoding",
               503: "not ready, or the model holds all it admits (Retry-After)",
               504: "the request's deadline passed before it ran"}
    return {str(code): _json(ERROR, meaning[code]) for code in codes}


def openapi_document(model_names: list[str], version: str) -> dict:
    """The OpenAPI document of a server serving ``model_names``."""
    name = {"name": "name", "in": "path", "required": True, "description": "a served model",
            "schema": {"type": "string", "enum": list(model_names)}}
    model_version = {"name": "version", "in": "path", "required": True, "description": "the only version: 1",
                     "schema": {"type": "string", "enum": ["1"]}}
    header_length = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
                     "description": "binary tensor data extension: the bytes of JSON before the binary tensors",
                     "schema": {"type": "integer", "minimum": 1}}
    infer_body = {"required": True, "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/inference_request"}}}}
    infer_responses = {"200": _json({"$ref": "#/components/schemas/inference_response"}, "the outputs"),
                       **_errors(400, 404, 408, 413, 415, 503, 504)}
    paths: dict = {
        "/v2": {"get": {"operationId": "server_metadata", "summary": "server metadata",
                        "responses": {"200": _json({"$ref": "#/components/schemas/metadata_server_response"},
                                                   "name, version, extensions")}}},
        "/v2/health/live": {"get": {"operationId": "server_live", "summary": "server liveness",
                                    "responses": {"200": _json({"type": "object"}, "live")}}},
        "/v2/health/ready": {"get": {"operationId": "server_ready", "summary": "server readiness",
                                     "responses": {"200": _json({"type": "object"}, "ready"),
                                                   **_errors(503)}}},
        "/v2/openapi.json": {"get": {"operationId": "openapi", "summary": "this document",
                                     "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0")}}},
        "/v2/models/{name}": {"get": {
            "operationId": "model_metadata", "summary": "model metadata", "parameters": [name],
            "responses": {"200": _json({"$ref": "#/components/schemas/metadata_model_response"}, "inputs, outputs"),
                          **_errors(404)}}},
        "/v2/models/{name}/versions/{version}": {"get": {
            "operationId": "model_version_metadata", "summary": "model metadata", "parameters": [name, model_version],
            "responses": {"200": _json({"$ref": "#/components/schemas/metadata_model_response"}, "inputs, outputs"),
                          **_errors(404)}}},
        "/v2/models/{name}/ready": {"get": {
            "operationId": "model_ready", "summary": "model readiness", "parameters": [name],
            "responses": {"200": _json({"type": "object"}, "ready"), **_errors(404, 503)}}},
        "/v2/models/{name}/versions/{version}/ready": {"get": {
            "operationId": "model_version_ready", "summary": "model readiness", "parameters": [name, model_version],
            "responses": {"200": _json({"type": "object"}, "ready"), **_errors(404, 503)}}},
        "/v2/models/{name}/infer": {"post": {
            "operationId": "model_infer", "summary": "inference", "parameters": [name, header_length],
            "requestBody": infer_body, "responses": infer_responses}},
        "/v2/models/{name}/versions/{version}/infer": {"post": {
            "operationId": "model_version_infer", "summary": "inference",
            "parameters": [name, model_version, header_length], "requestBody": infer_body,
            "responses": infer_responses}},
        "/v1/models/{name}/predict": {"post": {
            "operationId": "predict_images", "summary": "image files -> top classes (as tltf predict --json)",
            "parameters": [name, {"name": "top", "in": "query", "required": False,
                                  "schema": {"type": "integer", "minimum": 1, "default": 5}}],
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "properties": {"images": {"type": "array", "items": {
                    "type": "string", "format": "binary"}}, "top": {"type": "integer", "minimum": 1}}}}}},
            "responses": {"200": _json({"type": "array", "items": {"type": "object"}}, "per file, the top classes"),
                          **_errors(400, 404, 408, 413, 503, 504)}}},
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics", "responses": {
            "200": {"description": "Prometheus text format", "content": {"text/plain": {"schema": {
                "type": "string"}}}}}}},
    }
    datatype = {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
                                           "INT64", "FP16", "FP32", "FP64", "BYTES", "BF16"]}
    shape = {"type": "array", "items": {"type": "integer", "minimum": 0}}
    parameters = {"type": "object", "additionalProperties": True}
    tensor_data = {"description": "the tensor's elements, row-major (nested lists allowed)",
                   "type": "array", "items": {}}
    schemas = {
        "error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "metadata_server_response": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "metadata_tensor": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
            "name": {"type": "string"}, "datatype": datatype,
            "shape": {"type": "array", "items": {"type": "integer", "minimum": -1}}}},
        "metadata_model_response": {"type": "object", "required": ["name", "platform", "inputs", "outputs"],
                                    "properties": {
            "name": {"type": "string"}, "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/metadata_tensor"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/metadata_tensor"}}}},
        "request_input": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
            "name": {"type": "string"}, "shape": shape, "datatype": datatype,
            "parameters": {**parameters, "description": "binary_data_size: the input's bytes after the JSON"},
            "data": tensor_data}},
        "request_output": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"},
            "parameters": {**parameters, "description": "binary_data (bool), classification (k >= 0)"}}},
        "inference_request": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"},
            "parameters": {**parameters, "description": "binary_data_output (bool); timeout (microseconds, as "
                                                        "Triton's: past it, 504 and the request is not run)"},
            "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/request_input"}},
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/request_output"}}}},
        "response_output": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
            "name": {"type": "string"}, "shape": shape, "datatype": datatype, "parameters": parameters,
            "data": tensor_data}},
        "inference_response": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "parameters": parameters,
            "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/response_output"}}}},
    }
    return {"openapi": "3.0.3",
            "info": {"title": "tltf serve: Open Inference Protocol (KServe v2 REST)", "version": version,
                     "description": "ONNX models over the Open Inference Protocol, with dynamic batching. Every "
                                    "refusal is {\"error\": \"<one line>\"}."},
            "paths": paths, "components": {"schemas": schemas}}
