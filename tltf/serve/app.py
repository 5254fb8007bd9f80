"""The Starlette app: Open Inference Protocol (KServe v2) REST routes, image uploads, metrics.

==========================================================  =========================================================
``GET /v2``                                                 server metadata (name, version, extensions)
``GET /v2/health/live``, ``/v2/health/ready``               200 while serving (ready: every model's batcher runs)
``GET /v2/models/{name}[/versions/1]``                      model metadata: inputs and outputs, datatypes, shapes
``GET /v2/models/{name}[/versions/1]/ready``                200 if the model is served
``POST /v2/models/{name}[/versions/1]/infer``               inference: JSON tensors, binary data, classification
``POST /v1/models/{name}/predict[?top=5]``                  multipart image files -> ``tltf predict --json``'s list
``GET /metrics``                                            Prometheus text format (:mod:`tltf.serve.metrics`)
``GET /v2/openapi.json``                                    these routes, OpenAPI 3.0 (:mod:`tltf.serve.openapi`)
==========================================================  =========================================================

Every refusal is ``{"error": "<one line>"}`` with a 4xx status (5xx only for the server's own failures and the
refusals under load): unknown model or route 404, wrong method 405, a malformed or mismatched request 400, a body
too slow to arrive 408, an oversized body 413, an unsupported ``Content-Encoding`` 415, a model holding all it
admits 503 with ``Retry-After`` (:mod:`tltf.serve.admission`), a deadline passed before the request ran 504.
Inference goes through each model's :class:`tltf.serve.batcher.Batcher`; parsing a large JSON body, decoding
images and encoding large outputs run in worker threads, so the event loop stays free to read other requests.
While a request waits for its batch (from :data:`WATCH_AFTER_S` on), its connection is watched: a client that goes
away takes its request out of the queue (it is never run; metrics count it as 499, nginx's "client closed
request"); one answered sooner is sent to the closed connection and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tltf.runtime.outputs import top_k
from tltf.serve.admission import Admission, default_max_bytes, default_max_requests, timeout_of
from tltf.serve.batcher import Batcher
from tltf.serve.errors import ApiError, one_line
from tltf.serve.limits import BodyLimitMiddleware, inflate
from tltf.serve.metrics import MetricsMiddleware, ServeMetrics
from tltf.serve.models import ServedModel
from tltf.serve.openapi import openapi_document
from tltf.serve.protocol import DATATYPES, HEADER_LENGTH, RequestedOutput, classification, \
    encode_infer_response, parse_infer_request

#: bodies (JSON) and outputs (elements) past these sizes are parsed / encoded in a worker thread
THREAD_BODY_BYTES = 256 << 10
THREAD_OUTPUT_ELEMENTS = 1 << 16
#: at most this many files in one /v1 predict request
MAX_FILES = 256
EXTENSIONS = ["binary_tensor_data", "classification"]
#: the status a request whose client went away is counted with (nobody reads it)
CLIENT_GONE = 499


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    """The v2 error shape: ``{"error": "<one line>"}``."""
    return JSONResponse({"error": one_line(message)}, status, headers=headers)


def admissions(models: dict[str, ServedModel], max_batch: int, max_queue: int | None, max_queue_bytes: int | None,
               max_body_bytes: int) -> dict[str, Admission]:
    """Each model's bounds: ``max_queue`` requests (``None``: measured per model, :mod:`tltf.serve.admission`)
    and ``max_queue_bytes`` (``None``: the default for ``max_body_bytes``)."""
    return {name: Admission(name, max_queue or default_max_requests(model.rows_per_s, max_batch),
                            max_queue_bytes or default_max_bytes(max_body_bytes), model.rows_per_s)
            for name, model in models.items()}


def build_app(models: dict[str, ServedModel], max_batch: int = 32, max_delay_ms: float = 5.0,
              max_body_bytes: int = 64 << 20, on_ready=None, max_queue: int | None = None,
              max_queue_bytes: int | None = None, request_timeout_s: float | None = None,
              body_timeout_s: float | None = None) -> Starlette:
    """The app serving ``models`` (``{name: ServedModel}``), with its own metrics registry (``app.state.metrics``)
    and one batcher per model (``app.state.batchers``, bounded by ``app.state.admissions``), started and stopped
    by the app's lifespan. ``request_timeout_s`` is the deadline of a request that brings none (``None``: none);
    ``body_timeout_s`` bounds the time a body may take to arrive (``None``: unbounded)."""
    metrics = ServeMetrics()
    bounds = admissions(models, max_batch, max_queue, max_queue_bytes, max_body_bytes)
    batchers = {name: Batcher(model.run, model.max_batch or max_batch,  # a repository model's own batching first
                              (max_delay_ms if model.max_delay_ms is None else model.max_delay_ms) / 1000.0,
                              model.batchable,
                              metrics.batch_observer(name), name, bounds[name]) for name, model in models.items()}
    for name, batcher in batchers.items():
        metrics.watch_queue(name, batcher)
    serving = {"ready": False}
    document = {}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        for batcher in batchers.values():
            batcher.start()
        serving["ready"] = True
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:  # uvicorn has answered the in-flight requests by now (graceful shutdown)
            serving["ready"] = False
            for batcher in batchers.values():
                await batcher.stop()

    def model_of(request: Request) -> ServedModel:
        name = request.path_params["name"]
        if name not in models:
            raise ApiError(404, f"no model named {name!r} (served: {', '.join(models)})")
        version = request.path_params.get("version")
        if version is not None and version != "1":
            raise ApiError(404, f"model {name!r} has no version {version!r} (only 1)")
        return models[name]

    # --- health and metadata -------------------------------------------------------------------------------------

    async def server_metadata(request: Request) -> Response:
        from tltf import __version__

        return JSONResponse({"name": "tltf", "version": __version__, "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(request: Request) -> Response:
        if not serving["ready"] or not all(b.running for b in batchers.values()):
            return error_response(503, "not ready")
        return JSONResponse({"ready": True})

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(model_of(request).metadata())

    async def openapi(request: Request) -> Response:
        if not document:
            from tltf import __version__

            document.update(openapi_document(list(models), __version__))
        return JSONResponse(document)

    async def model_ready(request: Request) -> Response:
        model = model_of(request)
        if not serving["ready"] or not batchers[model.name].running:
            return error_response(503, f"model {model.name!r} is not ready")
        return JSONResponse({"name": model.name, "ready": True})

    # --- inference -------------------------------------------------------------------------------------------------

    async def infer(request: Request) -> Response:
        arrived = time.monotonic()  # the head is in: a deadline counts from here
        model = model_of(request)
        body = inflate(await request.body(), request.headers.get("content-encoding"), max_body_bytes)
        header_length = request.headers.get(HEADER_LENGTH)
        if header_length is None and len(body) > THREAD_BODY_BYTES:
            parsed = await run_in_threadpool(parse_infer_request, body, header_length)
        else:
            parsed = parse_infer_request(body, header_length)
        del body
        rows = model.check_inputs(parsed.inputs)
        wanted = requested_outputs(model, parsed.outputs, parsed.binary_output)
        timeout = timeout_of(parsed.parameters, request_timeout_s)
        values = await unless_gone(request, batchers[model.name].submit(
            parsed.inputs, rows, None if timeout is None else arrived + timeout, timeout))
        outputs = [(o.name, output_value(model, o, values[o.name]), bool(o.binary)) for o in wanted]
        if sum(v.size for _, v, binary in outputs if not binary) > THREAD_OUTPUT_ELEMENTS:
            content, headers = await run_in_threadpool(encode_infer_response, model.name, parsed.id, outputs)
        else:
            content, headers = encode_infer_response(model.name, parsed.id, outputs)
        return Response(content, headers=headers)

    async def predict(request: Request) -> Response:
        from tltf.runtime.outputs import class_probabilities
        from tltf.serve.images import decode_uploads

        arrived = time.monotonic()
        model = model_of(request)
        if model.image_size is None:
            raise ApiError(400, f"model {model.name!r} is not a tltf image classifier ({model.not_images})")
        form = await request.form(max_files=MAX_FILES, max_fields=16)
        try:
            field = form.get("top")
            top = parse_top(field if isinstance(field, str) else request.query_params.get("top", "5"))
            files = [item for _, item in form.multi_items() if not isinstance(item, str)]
            uploads = [(f.filename or f"file {i + 1}", await f.read()) for i, f in enumerate(files)]
        finally:
            await form.close()
        if not uploads:
            raise ApiError(400, "no image files: send them as multipart/form-data file fields")
        pixels = await run_in_threadpool(decode_uploads, uploads, model.image_size)
        spec = model.inputs[0]
        feeds = {spec.name: pixels.astype(DATATYPES[spec.datatype], copy=False)}
        deadline = None if request_timeout_s is None else arrived + request_timeout_s
        values = await unless_gone(request, batchers[model.name].submit(feeds, model.check_inputs(feeds), deadline,
                                                                         request_timeout_s))
        best = {}
        for output in [name for name, _ in model.tasks] if model.tasks else model.output_names[:1]:
            probs = class_probabilities(values[output])
            if probs.ndim != 2 or probs.shape[0] != len(uploads) or probs.shape[1] < 1:
                raise ApiError(500, f"model {model.name!r}: output of shape {probs.shape} for {len(uploads)} "
                                    "image(s) is not (images, classes) probabilities")
            best[output] = top_k(probs, model.output_classes.get(output), top)
        if model.tasks:  # a multitask model: every task, as `tltf predict --json` prints them
            results = [{"file": name, "tasks": {task: rows[i] for task, rows in best.items()}}
                       for i, (name, _) in enumerate(uploads)]
        else:
            results = [{"file": name, "top": rows} for (name, _), rows in zip(uploads, *best.values())]
        return Response(json.dumps(results), media_type="application/json")  # as `tltf predict --json` prints

    async def metrics_endpoint(request: Request) -> Response:
        content, content_type = metrics.exposition()
        return Response(content, headers={"Content-Type": content_type})

    metrics_endpoint.__name__ = "metrics"

    # --- errors --------------------------------------------------------------------------------------------------

    def count_rejected(request: Request, reason: str) -> None:
        name = request.path_params.get("name", "")
        metrics.rejected.labels(name if name in models else "", reason).inc()

    async def api_error(request: Request, exc: ApiError) -> Response:
        if exc.reason:
            count_rejected(request, exc.reason)
        return error_response(exc.status, exc.message, exc.headers or None)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            message = f"{request.method} {request.url.path}: no such route"
        elif exc.status_code == 405:
            message = f"{request.method} {request.url.path}: method not allowed"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, message, getattr(exc, "headers", None))

    async def disconnected(request: Request, exc: ClientDisconnect) -> Response:  # nobody reads it; no traceback
        count_rejected(request, "disconnected")
        return error_response(CLIENT_GONE, "the client disconnected before its answer")

    async def internal_error(request: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error ({type(exc).__name__})")

    v2 = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route(v2, model_metadata, methods=["GET"]),
        Route(versioned, model_metadata, methods=["GET"]),
        Route(f"{v2}/ready", model_ready, methods=["GET"]),
        Route(f"{versioned}/ready", model_ready, methods=["GET"]),
        Route(f"{v2}/infer", infer, methods=["POST"]),
        Route(f"{versioned}/infer", infer, methods=["POST"]),
        Route("/v1/models/{name}/predict", predict, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/v2/openapi.json", openapi, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    middleware=[Middleware(MetricsMiddleware, metrics=metrics, models=models),
                                Middleware(BodyLimitMiddleware, max_bytes=max_body_bytes,
                                           body_timeout=body_timeout_s)],
                    exception_handlers={ApiError: api_error, HTTPException: http_error, ClientDisconnect: disconnected,
                                        Exception: internal_error})
    app.state.metrics = metrics
    app.state.batchers = batchers
    app.state.models = models
    app.state.admissions = bounds
    return app


#: a request still waiting after this long starts watching its connection (sooner costs every request a task)
WATCH_AFTER_S = 0.02


async def unless_gone(request: Request, waiting):
    """The result of ``waiting`` (a batcher's ``submit``), unless the client disconnects first: then ``waiting``
    is cancelled (its request leaves the queue, never runs) and :class:`ClientDisconnect` is raised.

    Once the body has been read, the next ASGI message can only be ``http.disconnect``; a watcher task waits for
    it, started only once the request has waited :data:`WATCH_AFTER_S` (most answers come sooner, and a task per
    request cost 15 % of the throughput on 2 cores), so a vanished client holds its slot at most that much longer
    than it has to."""
    task = asyncio.current_task()
    state = {"gone": False, "watcher": None}

    async def watch():
        await _disconnect(request)
        state["gone"] = True
        task.cancel()  # lands in ``waiting``, which the request leaves

    def start_watching():
        state["watcher"] = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start_watching)
    try:
        return await waiting
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        if hasattr(task, "uncancel"):  # Python 3.11+: the cancel is handled here
            task.uncancel()
        raise ClientDisconnect() from None
    finally:
        timer.cancel()
        if state["watcher"] is not None:
            state["watcher"].cancel()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def requested_outputs(model: ServedModel, outputs: list[RequestedOutput] | None, binary_default: bool
                      ) -> list[RequestedOutput]:
    """The outputs to return (all of them if none were named), each with ``binary`` decided; an output the model
    does not have is a 400."""
    if outputs is None:
        return [RequestedOutput(name, binary_default) for name in model.output_names]
    for o in outputs:
        if o.name not in model.output_names:
            raise ApiError(400, f"model {model.name!r} has no output {o.name!r} (its outputs: "
                                f"{', '.join(model.output_names)})")
    return [RequestedOutput(o.name, binary_default if o.binary is None else o.binary, o.classification)
            for o in outputs]


def output_value(model: ServedModel, output: RequestedOutput, value: np.ndarray) -> np.ndarray:
    """An output as returned: the array, or its top ``classification`` strings (labelled with the model's class
    names when it has them)."""
    if output.classification:
        return classification(value, output.classification, model.output_classes.get(output.name))
    return value


def parse_top(value: str) -> int:
    """``top`` of a /v1 predict request: an integer >= 1."""
    try:
        top = int(value)
    except (TypeError, ValueError):
        raise ApiError(400, f"top {str(value)[:20]!r}: must be an integer >= 1") from None
    if top < 1:
        raise ApiError(400, f"top {top}: must be at least 1")
    return top
