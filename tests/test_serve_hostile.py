"""`tltf serve` under hostile clients: a full queue, deadlines, slowloris, vanishing clients, and a fuzzer.

One server (a subprocess, as users run it) serves ``tiny`` and ``affine`` from ``tests/test_serve.py`` and
``slow.onnx``: ``y = 2 x`` (``x`` FP32 [-1, 4]) after a loop of matrix products whose length is the largest ``n``
(INT64 [-1, 1]) of the batch, capped, so that a request can hold the model's worker for about as long as a test
needs (calibrated in-process on this machine). It runs with ``--max-batch 8 --max-delay-ms 0 --max-queue 8
--header-timeout-s 1 --body-timeout-s 1.5 --threads 1``. What each test waits for is a condition read from the
server's /metrics (requests held, running), never a guess at how long something takes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_serve import Server, images, infer_input, metric, metric_samples, models, no_serving, triton  # noqa: F401

MAX_QUEUE = 8
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.5
SLOW_SECONDS = 1.2  # what a "slow" request costs (its loop length is calibrated to it)
SLOW_CAP = 20_000  # the loop's cap: ~10 s at most, whatever a client (or the fuzzer) sends
FUZZ_SECONDS = float(os.environ.get("TLTF_FUZZ_SECONDS", 45))  # deeper runs on demand
FUZZ_EXAMPLES = int(os.environ.get("TLTF_FUZZ_EXAMPLES", 40))  # per operation


def write_slow_model(path, size: int = 384) -> None:
    """``y = 2 x`` after ``min(max(n), SLOW_CAP)`` products of a ``size`` x ``size`` matrix (Loop, Tanh)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("MatMul", ["s_in", "w"], ["p"]),
         helper.make_node("Tanh", ["p"], ["s_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [size, size])])
    nodes = [helper.make_node("ReduceMax", ["n"], ["most"], keepdims=0),
             helper.make_node("Min", ["most", "cap"], ["capped"]), helper.make_node("Max", ["capped", "zero"], ["m"]),
             helper.make_node("Loop", ["m", "true", "s0"], ["s"], body=body),
             helper.make_node("ReduceSum", ["s"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "nil"], ["nothing"]), helper.make_node("Mul", ["x", "two"], ["x2"]),
             helper.make_node("Add", ["x2", "nothing"], ["y"])]
    weights = {"w": (rng.normal(0, 1, (size, size)) / np.sqrt(size)).astype(np.float32),
               "cap": np.array(SLOW_CAP, np.int64), "zero": np.array(0, np.int64), "true": np.array(True),
               "s0": np.eye(size, dtype=np.float32), "nil": np.array(0, np.float32), "two": np.array(2, np.float32)}
    graph = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 4]),
                                              helper.make_tensor_value_info("n", TensorProto.INT64, ["b", 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 4])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def loop_length(path, seconds: float) -> int:
    """The ``n`` that makes one run of the slow model take about ``seconds`` here (one thread, as served)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"x": np.zeros((1, 4), np.float32), "n": np.array([[200]], np.int64)}
    session.run(None, feeds)
    times = []
    for _ in range(3):  # the fastest: a busy machine would make the slow request slower still, never faster
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    per_step = min(times) / 200
    return int(min(SLOW_CAP, max(50, seconds / per_step)))


@pytest.fixture(scope="module")
def hostile(models):  # noqa: F811 (the fixture imported from test_serve)
    """The server, and the loop length of a slow request."""
    slow = models["folder"] / "slow.onnx"
    write_slow_model(slow)
    server = Server([models["tiny"], models["affine"], slow, "--max-batch", "8", "--max-delay-ms", "0",
                     "--max-queue", MAX_QUEUE, "--header-timeout-s", HEADER_TIMEOUT_S, "--body-timeout-s",
                     BODY_TIMEOUT_S, "--threads", "1"], models["folder"] / "hostile.log")
    try:
        n = loop_length(slow, SLOW_SECONDS)
        yield server.wait_ready(), n
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.log.read_text()


# --- helpers ---------------------------------------------------------------------------------------------------

def slow_body(x: np.ndarray, n: int, **parameters) -> bytes:
    message = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()},
                          {"name": "n", "shape": [len(x), 1], "datatype": "INT64", "data": [int(n)] * len(x)}]}
    if parameters:
        message["parameters"] = parameters
    return json.dumps(message).encode()


def slow_infer(server, x: np.ndarray, n: int, **parameters) -> tuple[int, dict, dict, float]:
    """``(status, headers, JSON body, seconds)`` of one request to the slow model."""
    start = time.monotonic()
    status, headers, body = server.request("POST", "/v2/models/slow/infer", slow_body(x, n, **parameters))
    return status, {k.lower(): v for k, v in headers.items()}, json.loads(body), time.monotonic() - start


def outputs_of(answer: dict) -> np.ndarray:
    output = answer["outputs"][0]
    return np.array(output["data"], np.float32).reshape(output["shape"])


def gauge(server, name: str, model: str = "slow") -> float:
    return metric(metric_samples(server), name, model=model)


def wait_until(condition, what: str, timeout: float = 30.0) -> float:
    """Poll ``condition`` until it holds; the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"waited {timeout} s for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def held(server) -> float:
    return gauge(server, "tltf_serve_queue_requests")


def send_request(server, body: bytes, path: str = "/v2/models/slow/infer") -> socket.socket:
    """A raw connection that has sent a whole request (and will not read the answer unless asked)."""
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                 % (path.encode(), len(body)) + body)
    return sock


# --- admission and deadlines ------------------------------------------------------------------------------------

def test_a_full_queue_answers_503_at_once_with_retry_after_and_serves_again_once_drained(hostile):
    server, n = hostile
    before = metric_samples(server)
    x = np.arange(4, dtype=np.float32)[None]
    with ThreadPoolExecutor(MAX_QUEUE) as pool:
        first = pool.submit(slow_infer, server, x, n)
        wait_until(lambda: gauge(server, "tltf_serve_running_requests") == 1, "the first request to run")
        rest = [pool.submit(slow_infer, server, x + i, n) for i in range(1, MAX_QUEUE)]
        wait_until(lambda: held(server) == MAX_QUEUE, f"{MAX_QUEUE} requests held")
        status, headers, error, seconds = slow_infer(server, x, 0)
        assert status == 503 and list(error) == ["error"] and "is busy" in error["error"], error
        assert int(headers["retry-after"]) >= 1
        assert seconds < 0.5 * SLOW_SECONDS, f"the 503 took {seconds:.2f} s: it waited in the queue"
        assert held(server) == MAX_QUEUE  # a refused request holds nothing
        answers = [f.result() for f in [first, *rest]]
    for i, (status, _, answer, _) in enumerate(answers):
        assert status == 200
        np.testing.assert_array_equal(outputs_of(answer), 2 * (x + i))
    wait_until(lambda: held(server) == 0, "the queue to drain")
    status, _, answer, _ = slow_infer(server, x, 0)
    assert status == 200 and np.array_equal(outputs_of(answer), 2 * x)
    after = metric_samples(server)
    assert metric(after, "tltf_serve_rejected_total", model="slow", reason="queue_full") - metric(
        before, "tltf_serve_rejected_total", model="slow", reason="queue_full") == 1
    assert metric(after, "tltf_serve_requests_total", endpoint="infer", model="slow", code="503") - metric(
        before, "tltf_serve_requests_total", endpoint="infer", model="slow", code="503") == 1


def test_a_50_ms_deadline_behind_a_slow_batch_gets_504_and_never_runs(hostile):
    server, n = hostile
    before = metric_samples(server)
    x = np.ones((1, 4), np.float32)
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(slow_infer, server, x, n)
        wait_until(lambda: gauge(server, "tltf_serve_running_requests") == 1, "the slow request to run")
        status, _, error, seconds = slow_infer(server, 3 * x, 0, timeout=50_000)  # Triton's: microseconds
        assert slow.result()[0] == 200
    assert status == 504 and "deadline (50 ms) passed" in error["error"], error
    assert seconds < 0.5 * SLOW_SECONDS, f"the 504 took {seconds:.2f} s"
    after = metric_samples(server)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("tltf_serve_batch_requests_sum", model="slow") == 1  # only the slow one ran
    assert delta("tltf_serve_batch_rows_sum", model="slow") == 1
    assert delta("tltf_serve_rejected_total", model="slow", reason="deadline") == 1
    status, _, error, _ = slow_infer(server, x, 0, timeout="soon")
    assert status == 400 and "'timeout'" in error["error"]
    for timeout in (5_000_000, 10 ** 400):  # a deadline met; one too far to be a float (no deadline)
        status, _, answer, _ = slow_infer(server, x, 0, timeout=timeout)
        assert status == 200 and np.array_equal(outputs_of(answer), 2 * x)


# --- slow and vanishing clients ---------------------------------------------------------------------------------

def _trickle(server, head: bytes, body: bytes, step: float, found: dict, key: str) -> None:
    """Send ``head`` then ``body`` (or the head itself, if ``body`` is empty) a byte every ``step`` seconds until
    the server answers or closes; ``found[key]`` = (seconds, status line or None)."""
    start = time.monotonic()
    sock = socket.create_connection((server.host, server.port), timeout=30)
    sock.setblocking(False)
    data, pending = b"", (body and head) or b""
    trickled = body or head
    if pending:
        sock.sendall(pending)
    try:
        for i in range(10_000):
            try:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
                if b"\r\n\r\n" in data:
                    break
            except BlockingIOError:
                pass
            if trickled and i < len(trickled):
                try:
                    sock.send(trickled[i:i + 1])
                except OSError:
                    break
            if time.monotonic() - start > 20:
                break
            time.sleep(step)
    finally:
        sock.close()
    found[key] = (time.monotonic() - start, data.split(b"\r\n")[0] if data else None)


def test_slowloris_and_silent_connections_are_cut_off_within_the_bounds_while_others_are_served(hostile):
    server, _ = hostile
    before = metric_samples(server)
    found: dict = {}
    body_head = b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
    clients = [
        threading.Thread(target=_trickle, args=(server, body_head, b"{" * 1000, 0.2, found, "body")),
        threading.Thread(target=_trickle, args=(server, b"", b"", 0.2, found, "silent")),
        threading.Thread(target=_trickle, args=(server, body_head, b"", 0.2, found, "head")),
    ]
    for t in clients:
        t.start()
    client = triton(server)
    served = 0
    while any(t.is_alive() for t in clients):
        x = images(2, seed=served)
        start = time.monotonic()
        result = client.infer("tiny", [infer_input("pixels", x)]).as_numpy("probabilities")
        assert result.shape == (2, 3) and time.monotonic() - start < 1.0
        served += 1
    for t in clients:
        t.join()
    assert served >= 5
    assert found["body"][1] == b"HTTP/1.1 408 Request Timeout", found
    assert found["body"][0] < BODY_TIMEOUT_S + 1.0, found
    for key in ("silent", "head"):
        assert found[key][1] == b"HTTP/1.1 408 Request Timeout", found
        assert found[key][0] < HEADER_TIMEOUT_S + 1.0, found
    after = metric_samples(server)
    assert metric(after, "tltf_serve_rejected_total", model="tiny", reason="body_timeout") - metric(
        before, "tltf_serve_rejected_total", model="tiny", reason="body_timeout") == 1
    assert metric(after, "tltf_serve_rejected_total", model="", reason="head_timeout") - metric(
        before, "tltf_serve_rejected_total", model="", reason="head_timeout") == 2
    assert metric(after, "tltf_serve_queue_requests", model="tiny") == 0


def test_clients_that_vanish_free_their_slots_and_every_other_caller_gets_its_own_rows(hostile):
    """Behind a slow request: A, B, C stay, D leaves while its batch (with A, B, C) runs, E and F leave while
    queued. A, B, C get exactly their rows; E and F never run; every slot comes back."""
    server, n = hostile
    before = metric_samples(server)
    rng = np.random.default_rng(5)
    xs = {key: rng.normal(0, 10, (rows, 4)).astype(np.float32) for key, rows in zip("RABCDEF", (1, 1, 2, 3, 2, 1, 2))}
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(slow_infer, server, xs["R"], n)
        wait_until(lambda: gauge(server, "tltf_serve_running_requests") == 1, "the first request to run")
        stay = {key: pool.submit(slow_infer, server, xs[key], n) for key in "ABC"}
        wait_until(lambda: held(server) == 4, "A, B, C queued")
        leave = {key: send_request(server, slow_body(xs[key], n)) for key in "DEF"}
        wait_until(lambda: held(server) == 7, "D, E, F queued")
        for key in "EF":
            leave[key].close()
        wait_until(lambda: held(server) == 5, "E and F gone from the queue")
        assert first.result()[0] == 200
        wait_until(lambda: gauge(server, "tltf_serve_running_requests") == 4, "A, B, C, D running together")
        leave["D"].close()
        wait_until(lambda: held(server) == 3, "D's slot free while its batch runs")
        answers = {key: f.result() for key, f in stay.items()}
    for key, (status, _, answer, _) in answers.items():
        assert status == 200
        np.testing.assert_array_equal(outputs_of(answer), 2 * xs[key])
    wait_until(lambda: held(server) == 0, "every slot back")
    after = metric_samples(server)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("tltf_serve_batch_rows_sum", model="slow") == sum(len(xs[k]) for k in "RABCD")  # not E, F
    assert delta("tltf_serve_batch_requests_count", model="slow") == 2
    assert delta("tltf_serve_rejected_total", model="slow", reason="disconnected") == 3
    status, _, answer, _ = slow_infer(server, xs["E"], 0)
    assert status == 200 and np.array_equal(outputs_of(answer), 2 * xs["E"])


# --- the published routes, fuzzed ------------------------------------------------------------------------------

def test_the_openapi_document_describes_the_routes_and_fuzzing_it_finds_no_5xx(hostile, tmp_path):
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    server, _ = hostile
    status, headers, body = server.request("GET", "/v2/openapi.json")
    assert status == 200
    document = json.loads(body)
    assert document["openapi"].startswith("3.") and "/v2/models/{name}/infer" in document["paths"]
    infer = document["paths"]["/v2/models/{name}/infer"]["post"]
    assert infer["parameters"][0]["schema"]["enum"] == ["tiny", "affine", "slow"]
    assert {"400", "404", "413", "503", "504"} <= set(infer["responses"])
    schema = schemathesis.openapi.from_dict(document)
    failures, examples, operations = [], [0], 0
    stop_at = time.monotonic() + FUZZ_SECONDS

    def check(case) -> None:
        if time.monotonic() > stop_at:
            return
        response = case.call(base_url=server.url, timeout=20)
        examples[0] += 1
        problem = None
        if response.status_code >= 500:
            problem = "a 5xx"
        elif response.status_code >= 400:
            try:
                error = json.loads(response.content)
                if list(error) != ["error"] or "\n" in error["error"]:
                    problem = "not a one-line {'error': ...}"
            except (ValueError, TypeError):
                problem = "not JSON"
        if problem:
            failures.append((problem, case.method, case.formatted_path, response.status_code,
                             response.content[:300], case.body if not isinstance(case.body, bytes) else "bytes"))

    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        cases = st.one_of(*(operation.as_strategy(mode) for mode in GenerationMode))  # fitting it, and not
        settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                 phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))(
            given(case=cases)(check))()
    print(f"fuzzed {operations} operations with {examples[0]} requests")
    assert operations == len([m for p in document["paths"].values() for m in p])
    assert examples[0] >= 3 * operations
    if failures:  # all of them, for the regression list below
        saved = Path(os.environ.get("TLTF_FUZZ_FAILURES", tmp_path / "fuzz_failures.txt"))
        saved.write_text("\n".join(map(repr, failures)))
        print(f"{len(failures)} failures in {saved}")
    assert not failures, failures[:5]
    assert server.request("GET", "/v2/health/ready")[0] == 200
    assert "Traceback" not in server.log.read_text()


#: what the fuzzer found, kept: (path, body, status, in the message)
FUZZ_FINDINGS = [
    # numpy cannot make an array of this shape even with no elements: was a 500 (ValueError: array is too big)
    ("/v2/models/slow/versions/1/infer", {"inputs": [{"name": "x", "shape": [0, 2 ** 40, 2 ** 40], "datatype": "INT8",
                                                      "data": []}]}, 400, "is too large"),
    ("/v2/models/tiny/infer", {"inputs": [{"name": "pixels", "shape": [2 ** 62, 4], "datatype": "FP32",
                                           "parameters": {"binary_data_size": 0}}]}, 400, "is too large"),
]


@pytest.mark.parametrize("path, body, status, message", FUZZ_FINDINGS)
def test_what_the_fuzzer_found_stays_fixed(hostile, path, body, status, message):
    server, _ = hostile
    got, _, content = server.request("POST", path, json.dumps(body).encode())
    error = json.loads(content)
    assert (got, list(error)) == (status, ["error"]) and message in error["error"], content


# --- the pieces on their own (no server) ------------------------------------------------------------------------

def test_the_batcher_bounds_bytes_drops_expired_and_cancelled_requests_and_never_runs_them():
    import asyncio

    from tltf.serve.admission import Admission, QueueFull
    from tltf.serve.batcher import Batcher

    release = threading.Event()
    calls = []

    def run(feeds):
        release.wait(10)
        calls.append(feeds["x"][:, 0].tolist())
        return {"y": feeds["x"] * 2}

    async def scenario():
        batcher = Batcher(run, max_batch=8, max_delay=0, name="t",
                          admission=Admission("t", max_requests=4, max_bytes=100, rows_per_s=2.0))
        batcher.start()
        try:
            def rows(value, n=1):
                return {"x": np.full((n, 4), value, np.float32)}  # 16 bytes a row

            first = asyncio.ensure_future(batcher.submit(rows(1), 1))
            while batcher.running_requests != 1:
                await asyncio.sleep(0.001)
            kept = asyncio.ensure_future(batcher.submit(rows(2, 2), 2))  # 16 + 32 bytes held
            left = asyncio.ensure_future(batcher.submit(rows(3), 1))
            expiring = asyncio.ensure_future(batcher.submit(rows(4), 1, time.monotonic() + 0.05, 0.05))
            await asyncio.sleep(0)
            assert batcher.held_requests == 4
            with pytest.raises(QueueFull) as full:  # 4 requests: the count
                await batcher.submit(rows(5), 1)
            assert full.value.status == 503 and full.value.reason == "queue_full"
            assert full.value.headers == {"Retry-After": "3"}  # 5 rows at 2 rows/s
            left.cancel()  # the client went away
            await asyncio.sleep(0.1)  # the deadline passes meanwhile
            with pytest.raises(Exception) as late:
                await expiring
            assert late.value.status == 504 and late.value.reason == "deadline"
            assert batcher.held_requests == 2 and batcher.held_bytes == 48
            with pytest.raises(QueueFull) as full:  # 48 + 64 bytes > 100: the bytes
                await batcher.submit(rows(6, 4), 4)
            assert full.value.reason == "queue_bytes"
            release.set()
            results = await asyncio.gather(first, kept)
            assert batcher.held_requests == 0 and batcher.held_bytes == 0
            alone = await batcher.submit(rows(7, 10), 10)  # larger than the byte bound, but nothing is held
            return results, alone
        finally:
            release.set()
            await batcher.stop()

    (first, kept), alone = asyncio.run(scenario())
    assert first["y"].tolist() == [[2.0] * 4] and kept["y"].tolist() == [[4.0] * 4] * 2
    assert alone["y"].shape == (10, 4)
    assert calls == [[1.0], [2.0, 2.0], [7.0] * 10]  # 3 (cancelled) and 4 (expired) never ran


def test_hostile_options_out_of_range_are_one_line_errors(models, no_serving):  # noqa: F811
    from conftest import cli

    for args, message in [(["--max-queue", 0], "--max-queue 0: must be at least 1"),
                          (["--max-queue-mb", 0], "--max-queue-mb 0: must be above 0"),
                          (["--request-timeout-ms", -1], "--request-timeout-ms -1: must be between 0"),
                          (["--header-timeout-s", 0], "--header-timeout-s 0: must be above 0"),
                          (["--body-timeout-s", 7200], "--body-timeout-s 7200: must be above 0 and at most 3600")]:
        result = cli("serve", models["tiny"], *args)
        assert result.exit_code == 2 and result.stderr.startswith("error: "), result.output
        assert message in result.stderr and result.stderr.count("\n") == 1, result.stderr


def test_the_server_default_deadline_applies_unless_a_request_brings_its_own(models):  # noqa: F811
    """``--request-timeout-ms`` as ``build_app(request_timeout_s=...)``, driven in-process over ASGI: a default
    already past answers 504 before anything runs; a request's own ``timeout`` parameter overrides it."""
    import asyncio

    from tltf.serve.app import build_app
    from tltf.serve.models import ServedModel

    app = build_app({"affine": ServedModel(models["affine"], threads=1)}, max_delay_ms=0, request_timeout_s=1e-9)
    x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    k = {"name": "k", "shape": [1, 1], "datatype": "INT64", "data": [3]}

    async def post(message: dict) -> tuple[int, dict]:
        body, sent = json.dumps(message).encode(), []
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            if pending:
                return pending.pop()
            await asyncio.Event().wait()  # the client stays

        async def send(event):
            sent.append(event)

        scope = {"type": "http", "method": "POST", "path": "/v2/models/affine/infer", "raw_path": b"",
                 "query_string": b"", "headers": [(b"content-length", str(len(body)).encode())],
                 "http_version": "1.1", "scheme": "http", "server": ("test", 80), "client": ("test", 1),
                 "root_path": ""}
        await app(scope, receive, send)
        return sent[0]["status"], json.loads(b"".join(e.get("body", b"") for e in sent[1:]))

    async def scenario():
        batcher = app.state.batchers["affine"]
        batcher.start()
        try:
            late = await post({"inputs": [x, k]})
            own = await post({"inputs": [x, k], "parameters": {"timeout": 10_000_000}})
        finally:
            await batcher.stop()
        return late, own

    (status, late), (ok, own) = asyncio.run(scenario())
    assert status == 504 and "deadline" in late["error"], late
    assert ok == 200 and own["outputs"][0]["data"] == [3.0, 6.0, 9.0, 12.0]
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in app.state.metrics.registry.collect()
               for s in family.samples}
    assert samples[("tltf_serve_batch_rows_sum", (("model", "affine"),))] == 1  # the late one never ran
    assert samples[("tltf_serve_rejected_total", (("model", "affine"), ("reason", "deadline")))] == 1
