"""`tltf serve`: the Open Inference Protocol with Triton's own client, dynamic batching, bad clients, SIGTERM.

Two servers run as subprocesses (``python -m tltf serve``, as users run it), started together once for the module:
the main one serves a tiny image classifier with tltf's ONNX contract (32 px, 3 classes) and a generic graph (two
inputs, FP32 and INT64, no image contract); the second one is stopped with SIGTERM mid-request.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from tiny_onnx import write_tiny_classifier

ATOL = 2e-6  # server (tuned session, batched) vs onnxruntime in-process (default session)
START_TIMEOUT_S = 120


# --- models and servers ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``tiny.onnx``: a small image classifier with tltf's contract (NHWC ``pixels`` in [0, 255], ``probabilities``,
    class names and input size in the metadata, as :func:`tltf.runtime.onnx_model.read_contract` reads them), built
    with onnx.helper so that the servers can start without waiting for an export; ``affine.onnx``: ``y = x * k``
    (x FP32 [-1, 4], k INT64 [-1, 1]), no image contract -- any ONNX file is served over v2."""
    import onnx
    from onnx import TensorProto, helper

    folder = tmp_path_factory.mktemp("serve")
    write_tiny_classifier(folder / "tiny.onnx")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT), helper.make_node("Mul", ["x", "kf"], ["y"])],
        "affine", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
                   helper.make_tensor_value_info("k", TensorProto.INT64, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              folder / "affine.onnx")
    return {"tiny": folder / "tiny.onnx", "affine": folder / "affine.onnx", "folder": folder}


class Server:
    """A ``python -m tltf serve`` subprocess, its URL and its log (stdout and stderr)."""

    def __init__(self, args, log: Path):
        self.log = log
        with log.open("w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "tltf", "serve", *map(str, args), "--port", "0"],
                                         stdout=out, stderr=subprocess.STDOUT)
        self.url = None
        self.terminated = False

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            found = re.search(r"tltf serve: http://([\d.]+):(\d+)", self.log.read_text())
            if found:
                self.host, self.port = found.group(1), int(found.group(2))
                self.address = f"{self.host}:{self.port}"
                self.url = f"http://{self.address}"
                return self
            if self.proc.poll() is not None:
                pytest.fail(f"tltf serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail(f"tltf serve did not start in {START_TIMEOUT_S} s:\n{self.log.read_text()}")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """``(status, headers, body)`` of one plain HTTP request."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def terminate(self) -> None:
        if self.proc.poll() is None and not self.terminated:
            self.proc.send_signal(signal.SIGTERM)
            self.terminated = True

    def stop(self) -> int:
        self.terminate()
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="module")
def servers(models):
    """The main server (batching up to 16 rows, 50 ms, a 1 MB body limit) and the one SIGTERM stops, started
    together."""
    main = Server([models["tiny"], models["affine"], "--max-batch", "16", "--max-delay-ms", "50",
                   "--max-body-mb", "1", "--threads", "1"], models["folder"] / "main.log")
    second = Server([models["tiny"], "--threads", "1"], models["folder"] / "second.log")
    try:
        import keras  # noqa: F401  (TensorFlow loads here while the servers start, not after: the tests need it)

        yield main.wait_ready(), second.wait_ready()
    finally:
        for s in (main, second):  # both at once: each takes a moment to exit
            s.terminate()
        for s in (main, second):
            s.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def reference(models):
    """onnxruntime in-process, default session: what the server's answers must equal."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(models["tiny"]), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"pixels": x})[0]


def images(n: int, seed: int = 0) -> np.ndarray:
    """Images of one random colour each, with noise: the tiny model's answers to them differ row to row (checked
    where it matters)."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(30, 225, (n, 1, 1, 3))
    return np.clip(colours + rng.normal(0, 20, (n, 32, 32, 3)), 0, 255).astype(np.float32)


def triton(server, **kw):
    import tritonclient.http as httpclient

    return httpclient.InferenceServerClient(server.address, **kw)


def infer_input(name: str, array: np.ndarray, binary: bool = True):
    import tritonclient.http as httpclient
    from tritonclient.utils import np_to_triton_dtype

    tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def metric_samples(server) -> dict[tuple, float]:
    """``{(sample name, sorted labels): value}`` from ``GET /metrics``, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def metric(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- the protocol, with Triton's client -----------------------------------------------------------------------

def test_health_and_metadata_through_tritonclient(server):
    client = triton(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("affine")
    assert not client.is_model_ready("nope") and not client.is_model_ready("tiny", "2")
    assert client.get_model_metadata("tiny") == {
        "name": "tiny", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 32, 32, 3]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]}
    affine = client.get_model_metadata("affine", "1")
    assert affine["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]},
                                {"name": "k", "datatype": "INT64", "shape": [-1, 1]}]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_infer_equals_onnxruntime_in_process_binary_json_and_classification(server, reference):
    import tritonclient.http as httpclient

    client = triton(server)
    x = images(5, seed=1)
    expected = reference(x)
    binary = client.infer("tiny", [infer_input("pixels", x)], request_id="r1")  # tritonclient's defaults
    assert binary.get_response()["id"] == "r1"
    np.testing.assert_allclose(binary.as_numpy("probabilities"), expected, atol=ATOL, rtol=0)
    as_json = client.infer("tiny", [infer_input("pixels", x, binary=False)],
                           outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=False)])
    assert "data" in as_json.get_output("probabilities")  # really JSON both ways
    np.testing.assert_allclose(as_json.as_numpy("probabilities"), expected, atol=ATOL, rtol=0)
    top2 = client.infer("tiny", [infer_input("pixels", x)],
                        outputs=[httpclient.InferRequestedOutput("probabilities", class_count=2)]).as_numpy(
        "probabilities")
    names = ["cat", "dog", "fish"]
    order = np.argsort(-expected, axis=1, kind="stable")[:, :2]
    assert top2.shape == (5, 2)
    assert [[s.decode().split(":", 1)[1] for s in row] for row in top2] == [
        [f"{i}:{names[i]}" for i in row] for row in order]
    x4 = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5
    k = np.array([[2], [-3], [7]], dtype=np.int64)
    y = client.infer("affine", [infer_input("x", x4, binary=False), infer_input("k", k, binary=False)])
    np.testing.assert_array_equal(y.as_numpy("y"), x4 * k)


def test_400_concurrent_requests_are_batched_and_each_gets_its_own_rows(server, reference):
    """Every 10th request carries 3 rows; the metrics count rows and requests per onnxruntime call exactly."""
    x = images(400 + 40 * 2, seed=2)
    expected = reference(x)
    distances = np.abs(expected[:, None] - expected[None]).max(-1) + np.eye(len(x))
    assert distances.min() > 10 * ATOL  # a row sent back to the wrong caller could not pass unnoticed
    slices, start = [], 0
    for i in range(400):
        rows = 3 if i % 10 == 0 else 1
        slices.append(slice(start, start + rows))
        start += rows
    assert start == len(x)
    before = metric_samples(server)
    client = triton(server, concurrency=64, connection_timeout=60, network_timeout=60)
    pending = [client.async_infer("tiny", [infer_input("pixels", x[s])]) for s in slices]
    results = [p.get_result(timeout=120).as_numpy("probabilities") for p in pending]
    client.close()
    for s, result in zip(slices, results):
        np.testing.assert_allclose(result, expected[s], atol=ATOL, rtol=0)
    after = metric_samples(server)
    delta = {name: metric(after, name, model="tiny") - metric(before, name, model="tiny") for name in (
        "tltf_serve_batch_rows_sum", "tltf_serve_batch_requests_sum", "tltf_serve_batch_requests_count")}
    assert delta["tltf_serve_batch_rows_sum"] == len(x)
    assert delta["tltf_serve_batch_requests_sum"] == 400
    calls = delta["tltf_serve_batch_requests_count"]
    assert calls <= 300, f"{calls} onnxruntime calls for 400 concurrent requests: batching did not happen"
    assert calls >= len(x) / 16  # --max-batch 16 rows
    done = metric(after, "tltf_serve_requests_total", endpoint="infer", model="tiny", code="200") - metric(
        before, "tltf_serve_requests_total", endpoint="infer", model="tiny", code="200")
    assert done == 400


# --- bad clients -----------------------------------------------------------------------------------------------

def _infer_body(tensors: list, **extra) -> bytes:
    return json.dumps({"inputs": tensors, **extra}).encode()


def _pixels(shape=(1, 32, 32, 3), datatype="FP32", name="pixels", value=1.0) -> dict:
    return {"name": name, "shape": list(shape), "datatype": datatype, "data": [value] * int(np.prod(shape))}


BAD_REQUESTS = [  # (method, path, body, headers, status, in the message)
    ("POST", "/v2/models/tiny/infer", b"{not json", {}, 400, "malformed JSON"),
    ("POST", "/v2/models/tiny/infer", b"[1, 2]", {}, 400, "must be a JSON object"),
    ("POST", "/v2/models/tiny/infer", b"\x80 garbage", {}, 400, "not UTF-8 JSON"),
    ("POST", "/v2/models/tiny/infer", b"[" * 100_000, {}, 400, "malformed JSON"),
    ("POST", "/v2/models/tiny/infer", b"{}", {}, 400, "no 'inputs'"),
    ("POST", "/v2/models/tiny/infer", _infer_body([_pixels(name="image")]), {}, 400, "no input 'image'"),
    ("POST", "/v2/models/tiny/infer", _infer_body([_pixels((1, 31, 32, 3))]), {}, 400,
     "expects [-1, 32, 32, 3]"),
    ("POST", "/v2/models/tiny/infer", _infer_body([_pixels(datatype="INT32", value=1)]), {}, 400,
     "datatype INT32, model 'tiny' expects FP32"),
    ("POST", "/v2/models/tiny/infer", _infer_body([_pixels(datatype="FP17")]), {}, 400, "'FP17' is not supported"),
    ("POST", "/v2/models/tiny/infer", _infer_body([_pixels(value="a")]), {}, 400, "must hold numbers"),
    ("POST", "/v2/models/tiny/infer", _infer_body([{**_pixels(), "data": [1.0] * 5}]), {}, 400,
     "5 values do not fill shape"),
    ("POST", "/v2/models/tiny/infer", _infer_body([{**_pixels(), "shape": [1, -32, 32, 3]}]), {}, 400,
     "non-negative integers"),
    ("POST", "/v2/models/tiny/infer", _infer_body([_pixels()], outputs=[{"name": "logits"}]), {}, 400,
     "no output 'logits'"),
    ("POST", "/v2/models/tiny/infer", _infer_body([_pixels()]), {"Inference-Header-Content-Length": "99999999"},
     400, "Inference-Header-Content-Length 99999999 is outside the"),
    ("POST", "/v2/models/tiny/infer", _infer_body([{"name": "pixels", "shape": [1, 32, 32, 3], "datatype": "FP32",
                                                   "parameters": {"binary_data_size": 12288}}]), {}, 400,
     "binary data are missing"),
    ("POST", "/v2/models/tiny/infer", _infer_body([_pixels((0, 32, 32, 3))]), {}, 400, "empty batch"),
    ("POST", "/v2/models/affine/infer", _infer_body([_pixels((1, 4), name="x"),
                                                    _pixels((1, 1), "INT64", "k", value=2.5)]), {}, 400,
     "INT64 data must be integers"),
    ("POST", "/v2/models/affine/infer", _infer_body([_pixels((2, 4), name="x"), _pixels((3, 1), "INT64", "k", 1)]),
     {}, 400, "disagree on the batch size"),
    ("POST", "/v2/models/affine/infer", _infer_body([_pixels((1, 4), name="x")]), {}, 400, "'k' is missing"),
    ("POST", "/v2/models/nope/infer", _infer_body([_pixels()]), {}, 404, "no model named 'nope'"),
    ("POST", "/v2/models/tiny/versions/7/infer", _infer_body([_pixels()]), {}, 404, "no version '7'"),
    ("GET", "/v2/models/tiny/infer", None, {}, 405, "method not allowed"),
    ("GET", "/v3/anything", None, {}, 404, "no such route"),
    ("POST", "/v2/models/tiny/infer", gzip.compress(b" " * (2 << 20)), {"Content-Encoding": "gzip"}, 413,
     "decompressed gzip body is larger than the 1,048,576-byte limit"),
    ("POST", "/v2/models/tiny/infer", b"{}", {"Content-Encoding": "br"}, 415, "'br' is not supported"),
    ("POST", "/v1/models/affine/predict", b"", {}, 400, "not a tltf image classifier"),
    ("POST", "/v1/models/tiny/predict", b"", {}, 400, "no image files"),
    ("POST", "/v1/models/tiny/predict?top=0", b"", {}, 400, "top 0: must be at least 1"),
]


def _raw_exchange(server, head: bytes, chunks=()) -> tuple[int, dict]:
    """Send raw bytes (request head, then body chunks), stop sending, read the whole response."""
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(chunk)
        data = b""
        while True:
            part = sock.recv(65536)
            if not part:
                break
            data += part
    head_part, _, body = data.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), json.loads(body)


def test_bad_requests_get_one_line_4xx_json_and_the_server_stays_ready(server):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    for method, path, body, headers, status, message in BAD_REQUESTS:
        got, _, content = server.request(method, path, body, headers)
        error = json.loads(content)
        assert (got, list(error)) == (status, ["error"]), (path, body[:60] if body else body, content)
        assert message in error["error"] and "\n" not in error["error"], (message, error)
    # the body limit (1 MB here): from Content-Length before anything is read, and while a chunked body streams
    status, error = _raw_exchange(server, b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n"
                                          b"Content-Length: 1000000000\r\n\r\n")
    assert status == 413 and "1,000,000,000 bytes" in error["error"]
    chunk = b"%x\r\n%s\r\n" % (256 << 10, b" " * (256 << 10))  # 4 of them: exactly the limit; one byte more
    status, error = _raw_exchange(server, b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\n"
                                          b"Transfer-Encoding: chunked\r\n\r\n", [chunk] * 4 + [b"1\r\n \r\n"])
    assert status == 413 and "larger than the 1,048,576-byte limit" in error["error"]
    # Triton's client sees the message too
    client = triton(server)
    with pytest.raises(InferenceServerException, match=r"shape \[2, 32, 32\], model 'tiny' expects"):
        client.infer("tiny", [infer_input("pixels", np.zeros((2, 32, 32), np.float32))])
    with pytest.raises(InferenceServerException, match="no model named"):
        client.infer("tinyy", [infer_input("pixels", images(1))])
    # still ready, still right
    assert client.is_server_ready() and client.is_model_ready("tiny")
    result = client.infer("tiny", [infer_input("pixels", images(2))], outputs=[
        httpclient.InferRequestedOutput("probabilities")]).as_numpy("probabilities")
    assert result.shape == (2, 3) and np.allclose(result.sum(axis=1), 1, atol=1e-5)
    assert "Traceback" not in server.log.read_text()


# --- images, metrics -------------------------------------------------------------------------------------------

def test_v1_predict_answers_like_tltf_predict_json_and_refuses_garbage(server, models, tmp_path):
    import requests
    from PIL import Image

    rng = np.random.default_rng(3)
    png, jpg = tmp_path / "flower.png", tmp_path / "leaf.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(png)
    Image.fromarray(rng.integers(60, 200, (20, 30, 3), dtype=np.uint8)).save(jpg, quality=90)
    result = cli("predict", models["tiny"], png, jpg, "--json", "--top", "2")
    assert result.exit_code == 0, result.output
    expected = json.loads(result.stdout)
    url = f"{server.url}/v1/models/tiny/predict"
    files = [("images", ("flower.png", png.read_bytes(), "image/png")),
             ("images", ("leaf.jpg", jpg.read_bytes(), "image/jpeg"))]
    response = requests.post(url, params={"top": 2}, files=files, timeout=60)
    assert response.status_code == 200, response.text
    got = response.json()
    assert [r["file"] for r in got] == ["flower.png", "leaf.jpg"]
    for g, e in zip(got, expected):
        assert [(t["index"], t["label"]) for t in g["top"]] == [(t["index"], t["label"]) for t in e["top"]]
        np.testing.assert_allclose([t["score"] for t in g["top"]], [t["score"] for t in e["top"]], atol=ATOL)
    assert {t["label"] for r in got for t in r["top"]} <= {"cat", "dog", "fish"}
    garbage = requests.post(url, files=[("images", ("flower.png", png.read_bytes(), "image/png")),
                                        ("images", ("broken.png", b"\x89PNG\r\n not really", "image/png"))],
                            timeout=60)
    assert garbage.status_code == 400
    assert garbage.json() == {"error": "broken.png: not a readable image (UnidentifiedImageError)"}
    assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


def test_metrics_count_requests_errors_batches_and_latency(server):
    before = metric_samples(server)
    client = triton(server)
    for n in (1, 2, 3):
        client.infer("tiny", [infer_input("pixels", images(n, seed=n))])
    assert server.request("POST", "/v2/models/tiny/infer", b"{}")[0] == 400
    assert server.request("POST", "/v2/models/ghost/infer", b"{}")[0] == 404
    after = metric_samples(server)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("tltf_serve_requests_total", endpoint="infer", model="tiny", code="200") == 3
    assert delta("tltf_serve_requests_total", endpoint="infer", model="tiny", code="400") == 1
    assert delta("tltf_serve_errors_total", endpoint="infer", model="tiny") == 1
    assert delta("tltf_serve_errors_total", endpoint="infer", model="") == 1  # a client's made-up name: no label
    assert delta("tltf_serve_request_seconds_count", endpoint="infer") == 5
    assert delta("tltf_serve_request_seconds_sum", endpoint="infer") > 0
    assert delta("tltf_serve_batch_rows_sum", model="tiny") == 6  # sequential: one call each
    assert delta("tltf_serve_batch_rows_count", model="tiny") == 3
    assert delta("tltf_serve_inference_seconds_count", model="tiny") == 3
    assert metric(after, "tltf_serve_batch_rows_bucket", model="tiny", le="2.0") - metric(
        before, "tltf_serve_batch_rows_bucket", model="tiny", le="2.0") == 2


# --- shutdown, the command line --------------------------------------------------------------------------------

def test_sigterm_answers_the_request_in_flight_then_exits_0(servers, reference):
    server = servers[1]
    x = images(2, seed=4)
    body = _infer_body([{"name": "pixels", "shape": [2, 32, 32, 3], "datatype": "FP32",
                         "data": x.ravel().tolist()}])
    with socket.create_connection((server.host, server.port), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        sock.sendall(body[:1000])
        deadline = time.monotonic() + 30
        while metric(metric_samples(server), "tltf_serve_requests_in_progress") < 2:  # this one and /metrics
            assert time.monotonic() < deadline, "the server never began reading the request"
            time.sleep(0.02)
        server.terminate()
        while True:  # no new connections once it is shutting down
            try:
                socket.create_connection((server.host, server.port), timeout=5).close()
            except OSError:
                break
            assert time.monotonic() < deadline, "the server still accepts connections after SIGTERM"
            time.sleep(0.02)
        assert server.proc.poll() is None  # still answering the request in flight
        sock.sendall(body[1000:])
        data = b""
        while part := sock.recv(65536):  # the server closes the connection after answering: it is stopping
            data += part
    head, _, content = data.partition(b"\r\n\r\n")
    assert head.split()[1] == b"200", data[:300]
    output = json.loads(content)["outputs"][0]
    np.testing.assert_allclose(np.array(output["data"], np.float32).reshape(output["shape"]), reference(x),
                               atol=ATOL, rtol=0)
    assert server.proc.wait(timeout=30) == 0
    log = server.log.read_text()
    assert "Shutting down" in log and "Traceback" not in log


@pytest.fixture
def no_serving(monkeypatch):
    """The command must fail before serving: if it ever got that far, fail instead of serving forever."""
    import uvicorn

    def refuse(self, sockets=None):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)


def test_bad_command_lines_are_one_line_errors_with_status_2(models, tmp_path, no_serving):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf" * 10)
    other = tmp_path / "other"
    other.mkdir()
    (other / "tiny.onnx").write_bytes(models["tiny"].read_bytes())
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    cases = [
        ([tmp_path / "missing.onnx"], "missing.onnx: no such model file"),
        ([garbage], "garbage.onnx: onnxruntime cannot load it"),
        ([tmp_path], "not a file"),
        ([models["tiny"], other / "tiny.onnx"], "a second model named 'tiny'"),
        ([models["tiny"], "--port", port], f"--port {port}: 127.0.0.1:{port} is already in use"),
        ([models["tiny"], "--max-batch", 0], "--max-batch 0: must be at least 1"),
        ([models["tiny"], "--max-body-mb", -1], "--max-body-mb -1: must be above 0"),
        ([models["tiny"], "--port", 70000], "--port 70000: must be between 0"),
    ]
    try:
        for args, message in cases:
            result = cli("serve", *args)
            assert result.exit_code == 2, (args, result.output)
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
            assert message in result.stderr, (message, result.stderr)
            assert "Traceback" not in result.output
    finally:
        taken.close()


# --- the batcher on its own ------------------------------------------------------------------------------------

def test_batcher_counts_rows_keeps_shapes_apart_and_isolates_a_failing_request():
    from tltf.serve.batcher import Batcher
    from tltf.serve.errors import ApiError

    calls = []

    def run(feeds):
        x = feeds["x"]
        calls.append(x.shape)
        if np.isnan(x).any():
            raise ApiError(500, "NaN")
        return {"y": x * 2}

    async def scenario():
        batcher = Batcher(run, max_batch=8, max_delay=0.05, on_batch=None, name="t")
        batcher.start()
        try:
            rows = [3, 3, 3, 1, 9]
            inputs = [np.full((r, 2), i, np.float32) for i, r in enumerate(rows)]
            inputs.append(np.full((1, 5), 7, np.float32))  # another shape: its own batch
            inputs.append(np.array([[np.nan, 1]], np.float32))  # fails alone, the others it ran with do not
            inputs.append(np.ones((2, 2), np.float32))
            results = await asyncio.gather(*[batcher.submit({"x": x}, len(x)) for x in inputs],
                                           return_exceptions=True)
        finally:
            await batcher.stop()
        return inputs, results

    inputs, results = asyncio.run(scenario())
    for i, (x, result) in enumerate(zip(inputs, results)):
        if i == 6:
            assert isinstance(result, ApiError) and result.status == 500
        else:
            np.testing.assert_array_equal(result["y"], x * 2)
    # 3+3 (a third 3 would pass 8), then 3+1 (9 runs alone: larger than max_batch), 9, (1,5), then the
    # [nan]+[ones] batch fails and is re-run one by one
    assert calls == [(6, 2), (4, 2), (9, 2), (1, 5), (3, 2), (1, 2), (2, 2)]


# --- a Triton model repository (tltf package --triton) -----------------------------------------------------------

@pytest.fixture(scope="module")
def repository_server(models):
    """``tltf serve --model-repository`` on the repository ``tltf package`` writes for tiny.onnx (batch sizes from a
    bench JSON; the queue delay then set to 2 ms in config.pbtxt, as an operator would tune it for Triton)."""
    folder = models["folder"]
    (folder / "bench.json").write_text(json.dumps({"results": [
        {"runtime": "onnxruntime", "batch_size": 4, "images_per_s": 900.0},
        {"runtime": "onnxruntime", "batch_size": 8, "images_per_s": 1000.0}]}))
    result = cli("package", models["tiny"], "--triton", folder / "repo", "--bench-json", folder / "bench.json")
    assert result.exit_code == 0, result.output
    config = folder / "repo" / "tiny" / "config.pbtxt"
    text = config.read_text()
    assert "max_queue_delay_microseconds: 0" in text
    config.write_text(text.replace("max_queue_delay_microseconds: 0", "max_queue_delay_microseconds: 2000"))
    labels = folder / "repo" / "tiny" / "labels.txt"
    assert labels.read_text() == "cat\ndog\nfish\n"
    labels.write_text("Cat\nDog\nFish\n")  # Triton labels classifications from this file: so must tltf
    server = Server(["--model-repository", folder / "repo", "--threads", "1"], folder / "repository.log")
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_model_repository_answers_tritonclient_like_the_file(server, repository_server):
    """The same tritonclient calls get the same answers from ``tltf serve tiny.onnx`` and from ``tltf serve
    --model-repository`` (the model named by its folder, batched as its config.pbtxt says, not as the options)."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    assert re.search(r"models: tiny \(v2, v1 images, batch 8, delay 2 ms\)", repository_server.log.read_text())
    from_file, from_repo = triton(server), triton(repository_server)
    assert from_repo.is_server_ready() and from_repo.is_model_ready("tiny") and from_repo.is_model_ready("tiny", "1")
    assert from_repo.get_model_metadata("tiny") == from_file.get_model_metadata("tiny")
    x = images(8, seed=5)  # config.pbtxt's max_batch_size: more rows are refused, as Triton refuses them
    outputs = [httpclient.InferRequestedOutput("probabilities", class_count=3)]
    for client_kwargs in ({}, {"outputs": outputs}):
        a = from_file.infer("tiny", [infer_input("pixels", x)], **client_kwargs).as_numpy("probabilities")
        b = from_repo.infer("tiny", [infer_input("pixels", x)], **client_kwargs).as_numpy("probabilities")
        if a.dtype == object:  # classification: "score:index:label" strings, labels from the labels file
            assert [[s.decode().split(":", 1)[1].lower() for s in row] for row in a] == \
                   [[s.decode().split(":", 1)[1].lower() for s in row] for row in b]
            assert {s.decode().rsplit(":", 1)[1] for s in b.ravel()} == {"Cat", "Dog", "Fish"}
        else:
            np.testing.assert_allclose(b, a, atol=ATOL, rtol=0)
            assert len(set(a.argmax(1))) > 1  # the images get different answers: a real comparison
    nine = images(9, seed=6)
    assert from_file.infer("tiny", [infer_input("pixels", nine)]).as_numpy("probabilities").shape == (9, 3)
    with pytest.raises(InferenceServerException, match=r"inference request batch-size must be <= 8 for 'tiny'"):
        from_repo.infer("tiny", [infer_input("pixels", nine)])  # Triton's limit and its words


def test_model_repository_errors_are_one_line(tmp_path, models):
    bad = tmp_path / "repo" / "m"
    (bad / "1").mkdir(parents=True)
    (bad / "config.pbtxt").write_text('name: "m" platform: "tensorflow_savedmodel"')
    result = cli("serve", "--model-repository", tmp_path / "repo", "--port", "0")
    assert result.exit_code == 2 and "tensorflow_savedmodel" in result.stderr and "ONNX Runtime" in result.stderr
    (bad / "config.pbtxt").write_text('name: "m" platform: "onnxruntime_onnx" max_batch_size: 4')
    result = cli("serve", "--model-repository", tmp_path / "repo", "--port", "0")
    assert result.exit_code == 2 and "1/model.onnx: no such model file" in result.stderr
    assert cli("serve", "--model-repository", tmp_path / "none").exit_code == 2
    result = cli("serve", "--model-repository", tmp_path / "repo", models["tiny"], "--port", "0")
    assert result.exit_code == 2 and "not both" in result.stderr
