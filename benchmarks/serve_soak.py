"""Soak test of ``tltf serve`` under hostile clients: good requests served on time, bad ones refused, memory flat.

    python benchmarks/serve_soak.py [--seconds 150] [--good-clients 4] [--json benchmarks/serve_soak.json]

Localhost only, bounded (``--seconds`` plus about 30 s of start-up, warm-up and settling). One ``tltf serve``
subprocess (defaults, except ``--max-body-mb 8`` and ``--max-queue 64`` so that the oversized and the flooding
clients stay cheap for the client's side of the 2 shared cores) serves a small image classifier built with
onnx.helper (tltf's contract, 64 px, two convolutions; no TensorFlow needed). Phases:

1. **warm-up** (20 s): the good clients, and for its second half every kind of bad client as well (one flood of
   requests sizes onnxruntime's arena for full batches, one oversized body passes through the body reader, ...:
   the working set of a server under such load), then the server's RSS is taken (*RSS after warm-up*; the RSS
   after the good-only first half is reported too);
2. **baseline** (a third of ``--seconds``): the good clients only: their p50 / p99 *without bad clients*;
3. **hostile** (two thirds): the good clients and, at once, every kind of bad client (below): their p50 / p99
   *with bad clients*;
4. **settle** (the bad clients stop and their connections close, then 10 s of good clients): *RSS at the end*.

Good clients: ``--good-clients`` closed-loop keep-alive connections, one 64x64 image per request (binary tensor
data, as tritonclient sends), each answer checked against onnxruntime in-process (a row sent to the wrong caller
would fail the run). Bad clients, each kind on its own schedule: **malformed** (bad JSON, wrong shapes, unknown
models: 400/404), **oversized** (a declared 100 MB body, and a chunked body streaming past the limit: 413),
**slowloris** (bodies a byte a second: 408 after ``--body-timeout-s``), **silent** connections and heads a byte a
second (408 after ``--header-timeout-s``), **disconnecting** (a whole request, then gone before the answer; half a
body, then gone), **deadline** (Triton's ``timeout`` of 1 µs: 504), **flood** (bursts of 96 requests at once
against a queue of 64: 503 with Retry-After).

What must hold (the run says so and exits 1 otherwise): no 5xx but the documented 503 / 504 (from the server's own
/metrics), good-request p99 with bad clients within 2x of its value without, RSS at the end within 10 % of RSS
after warm-up. Writes ``benchmarks/serve_soak.json``: requests served, rejected by reason (client side and the
server's ``tltf_serve_rejected_total``), status codes, latencies, RSS every second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

IMAGE = 64
CLASSES = 10
MAX_BODY_MB = 8
MAX_QUEUE = 64
FLOOD = 96
WARMUP_S, SETTLE_S = 20.0, 10.0  # the second half of the warm-up has the bad clients too


# --- the model and the server ------------------------------------------------------------------------------------

def write_model(path: Path) -> None:
    """A small classifier with tltf's ONNX contract: NHWC pixels in [0, 255] -> 10 class probabilities."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"scale": np.array(1 / 255, np.float32),
               "w1": rng.normal(0, 0.3, (32, 3, 3, 3)).astype(np.float32), "b1": np.zeros(32, np.float32),
               "w2": rng.normal(0, 0.1, (64, 32, 3, 3)).astype(np.float32), "b2": np.zeros(64, np.float32),
               "fc": rng.normal(0, 1, (64, CLASSES)).astype(np.float32), "fb": np.zeros(CLASSES, np.float32)}
    nodes = [helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
             helper.make_node("Transpose", ["scaled"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w1", "b1"], ["c1"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["features"]),
             helper.make_node("Gemm", ["features", "fc", "fb"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1)]
    graph = helper.make_graph(nodes, "soak", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                            ["batch", IMAGE, IMAGE, 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", CLASSES])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(model, {"class_names": json.dumps([f"c{i}" for i in range(CLASSES)]),
                                   "image_size": json.dumps([IMAGE, IMAGE]), "input_name": "pixels",
                                   "output_name": "probabilities"})
    onnx.save(model, path)


def start_server(path: Path, log: Path) -> tuple[subprocess.Popen, str, int, str]:
    proc = subprocess.Popen([sys.executable, "-m", "tltf", "serve", str(path), "--port", "0", "--log-level", "warning",
                             "--max-body-mb", str(MAX_BODY_MB), "--max-queue", str(MAX_QUEUE)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        text = log.read_text()
        found = re.search(r"tltf serve: http://([\d.]+):(\d+).*", text)
        if found:
            return proc, found.group(1), int(found.group(2)), found.group(0)
        if proc.poll() is not None:
            raise SystemExit(f"tltf serve exited with {proc.returncode}:\n{text}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("tltf serve did not start")


def rss_sampler(pid: int, samples: list, stop: threading.Event, started: float) -> None:
    import psutil

    process = psutil.Process(pid)
    while not stop.wait(1.0):
        try:
            samples.append((round(time.monotonic() - started, 1), process.memory_info().rss))
        except psutil.Error:
            return


def server_metrics(host: str, port: int) -> dict:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=30).read().decode()
    codes, rejected = Counter(), Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tltf_serve_requests_total":
                codes[s.labels["code"]] += int(s.value)
            elif s.name == "tltf_serve_rejected_total":
                rejected[s.labels["reason"]] += int(s.value)
    return {"codes": dict(sorted(codes.items())), "rejected": dict(sorted(rejected.items()))}


# --- raw HTTP/1.1 over asyncio streams ---------------------------------------------------------------------------

def request_bytes(path: str, body: bytes, headers: dict | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return head.encode() + b"\r\n" + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = re.search(rb"(?i)content-length: *(\d+)", head)
    body = await reader.readexactly(int(length.group(1))) if length else await reader.read()
    return status, body


async def one_shot(host: str, port: int, data: bytes, timeout: float = 60) -> int | str:
    """A new connection, one request, the status (or what went wrong)."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return "connect failed"
    try:
        writer.write(data)
        await writer.drain()
        status, _ = await asyncio.wait_for(read_response(reader), timeout)
        return status
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
        return "closed"
    finally:
        writer.close()


def infer_body(x: np.ndarray, **parameters) -> tuple[bytes, dict]:
    header = {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                          "parameters": {"binary_data_size": x.nbytes}}],
              "outputs": [{"name": "probabilities", "parameters": {"binary_data": False}}]}
    if parameters:
        header["parameters"] = parameters
    text = json.dumps(header).encode()
    return text + x.tobytes(), {"Inference-Header-Content-Length": str(len(text)),
                                "Content-Type": "application/octet-stream"}


# --- the clients -------------------------------------------------------------------------------------------------

class Soak:
    def __init__(self, host: str, port: int, images: np.ndarray, expected: np.ndarray):
        self.host, self.port = host, port
        self.images, self.expected = images, expected
        self.phase = "warm-up"
        self.latencies: dict[str, list[float]] = {}
        self.good: Counter = Counter()  # (phase, outcome)
        self.bad: Counter = Counter()  # (kind, outcome)
        self.wrong_rows = 0
        self.stop_bad = asyncio.Event()
        self.stop_good = asyncio.Event()

    async def good_client(self, index: int) -> None:
        reader = writer = None
        i = index
        while not self.stop_good.is_set():
            k = i % len(self.images)
            body, headers = infer_body(self.images[k:k + 1])
            phase = self.phase
            start = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                writer.write(request_bytes("/v2/models/soak/infer", body, headers))
                await writer.drain()
                status, content = await asyncio.wait_for(read_response(reader), 60)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
                self.good[(phase, type(e).__name__)] += 1
                if writer is not None:
                    writer.close()
                reader = writer = None
                await asyncio.sleep(0.05)
                continue
            elapsed = time.perf_counter() - start
            self.good[(phase, status)] += 1
            if status == 200:
                output = json.loads(content)["outputs"][0]
                got = np.array(output["data"], np.float32).reshape(output["shape"])
                if not np.allclose(got, self.expected[k:k + 1], atol=1e-5):
                    self.wrong_rows += 1
                self.latencies.setdefault(phase, []).append(elapsed)
            else:
                await asyncio.sleep(0.05)
            i += 1
        if writer is not None:
            writer.close()

    async def every(self, seconds: float, kind: str, action) -> None:
        """Run ``action()`` (-> an outcome) every ``seconds`` (jittered) until the bad clients stop."""
        while not self.stop_bad.is_set():
            outcome = await action()
            self.bad[(kind, outcome)] += 1
            try:
                await asyncio.wait_for(self.stop_bad.wait(), seconds * random.uniform(0.5, 1.5))
            except asyncio.TimeoutError:
                pass

    # each returns an outcome: a status, "closed", ...

    async def malformed(self):
        x = self.images[:1]
        bodies = [(b"{not json", {}), (b"[1, 2]", {}), (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 3],
                                                                               "datatype": "FP32",
                                                                               "data": [1, 2, 3]}]}).encode(), {}),
                  infer_body(x[:, :32]), (b"\x00" * 500, {"Inference-Header-Content-Length": "10"})]
        body, headers = random.choice(bodies)
        path = random.choice(["/v2/models/soak/infer", "/v2/models/soak/infer", "/v2/models/nope/infer"])
        return await one_shot(self.host, self.port, request_bytes(path, body, headers))

    async def oversized_declared(self):
        return await one_shot(self.host, self.port, b"POST /v2/models/soak/infer HTTP/1.1\r\nHost: soak\r\n"
                                                    b"Content-Length: 100000000\r\n\r\n")

    async def oversized_streamed(self):
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return "connect failed"
        try:
            writer.write(b"POST /v2/models/soak/infer HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
            for _ in range(MAX_BODY_MB + 2):
                writer.write(chunk)
                await writer.drain()
            status, _ = await asyncio.wait_for(read_response(reader), 30)
            return status
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            return "closed"
        finally:
            writer.close()

    async def trickle(self, kind: str, head: bytes, trickled: bytes):
        """Send ``head``, then ``trickled`` a byte a second, until the server answers or closes."""
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return "connect failed"
        start = time.monotonic()
        try:
            writer.write(head)
            response = asyncio.ensure_future(read_response(reader))
            sent = 0
            while not self.stop_bad.is_set():
                done, _ = await asyncio.wait({response}, timeout=1.0)
                if done:
                    break
                if sent < len(trickled):
                    writer.write(trickled[sent:sent + 1])
                    sent += 1
            if not response.done():
                response.cancel()
                return "stopped"
            status, _ = response.result()
            self.cut_after.setdefault(f"{kind}: {status}", []).append(time.monotonic() - start)
            return status
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return "closed"
        finally:
            writer.close()

    async def slowloris_body(self):
        body, headers = infer_body(self.images[:1])
        data = request_bytes("/v2/models/soak/infer", body, headers)
        split = data.index(b"\r\n\r\n") + 4
        return await self.trickle("slowloris body", data[:split], data[split:])

    async def slow_head(self):
        body, headers = infer_body(self.images[:1])
        data = request_bytes("/v2/models/soak/infer", body, headers)
        return await self.trickle("slow head", b"", data[:data.index(b"\r\n\r\n") + 4])

    async def silent(self):
        return await self.trickle("silent", b"", b"")  # connects, sends nothing

    async def disconnect_before_answer(self):
        k = random.randrange(len(self.images))
        body, headers = infer_body(self.images[k:k + 1])
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return "connect failed"
        writer.write(request_bytes("/v2/models/soak/infer", body, headers))
        await writer.drain()
        writer.transport.abort()  # gone before the answer
        return "left"

    async def disconnect_mid_body(self):
        body, headers = infer_body(self.images[:1])
        data = request_bytes("/v2/models/soak/infer", body, headers)
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError:
            return "connect failed"
        writer.write(data[:len(data) // 2])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
        return "left"

    async def deadline(self):
        body, headers = infer_body(self.images[:1], timeout=1)  # 1 µs: past before it can run
        return await one_shot(self.host, self.port, request_bytes("/v2/models/soak/infer", body, headers))

    async def flood(self):
        body, headers = infer_body(self.images[:1])
        data = request_bytes("/v2/models/soak/infer", body, headers)
        statuses = await asyncio.gather(*[one_shot(self.host, self.port, data) for _ in range(FLOOD)])
        for status in statuses:
            self.bad[("flood request", status)] += 1
        return "burst"

    def bad_clients(self) -> list:
        self.cut_after: dict = {}
        tasks = [self.every(0.05, "malformed", self.malformed),
                 self.every(0.2, "oversized (declared)", self.oversized_declared),
                 self.every(3.0, "oversized (streamed)", self.oversized_streamed),
                 self.every(0.1, "disconnect before answer", self.disconnect_before_answer),
                 self.every(0.2, "disconnect mid-body", self.disconnect_mid_body),
                 self.every(0.2, "deadline 1 us", self.deadline),
                 self.every(10.0, "flood", self.flood)]
        tasks += [self.every(0.0, "slowloris body", self.slowloris_body) for _ in range(16)]
        tasks += [self.every(0.0, "slow head", self.slow_head) for _ in range(8)]
        tasks += [self.every(0.0, "silent", self.silent) for _ in range(16)]
        return tasks


def percentiles(latencies: list[float]) -> dict:
    ms = np.asarray(latencies) * 1000
    if not len(ms):
        return {"requests": 0}
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "max_ms": round(float(ms.max()), 2)}


async def run_soak(soak: Soak, good_clients: int, seconds: float, rss: list, started: float) -> dict:
    marks = {}
    good = [asyncio.ensure_future(soak.good_client(i)) for i in range(good_clients)]
    await asyncio.sleep(WARMUP_S / 2)
    marks["warm-up, bad clients start"] = time.monotonic() - started
    bad = [asyncio.ensure_future(t) for t in soak.bad_clients()]
    await asyncio.sleep(WARMUP_S / 2)
    soak.stop_bad.set()
    await asyncio.gather(*bad)
    soak.stop_bad = asyncio.Event()
    soak.bad_in_warm_up, soak.bad = soak.bad, Counter()
    await asyncio.sleep(2.0)  # their connections closed
    marks["warm-up end"] = time.monotonic() - started
    soak.seen_before = await asyncio.to_thread(server_metrics, soak.host, soak.port)
    soak.phase = "baseline"
    await asyncio.sleep(seconds / 3)
    soak.phase = "hostile"
    marks["hostile start"] = time.monotonic() - started
    bad = [asyncio.ensure_future(t) for t in soak.bad_clients()]
    await asyncio.sleep(seconds * 2 / 3)
    soak.stop_bad.set()
    await asyncio.gather(*bad)
    soak.seen_after = await asyncio.to_thread(server_metrics, soak.host, soak.port)
    soak.phase = "settle"
    marks["settle start"] = time.monotonic() - started
    await asyncio.sleep(SETTLE_S)
    soak.stop_good.set()
    await asyncio.gather(*good)
    marks["end"] = time.monotonic() - started
    return marks


def rss_at(rss: list, t: float) -> int:
    """The last RSS sample taken at or before ``t`` seconds."""
    before = [value for at, value in rss if at <= t]
    return before[-1] if before else rss[0][1]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=150.0,
                        help="baseline + hostile phases (a third, two thirds); plus ~40 s of start, warm-up, settle")
    parser.add_argument("--good-clients", type=int, default=4)
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args(argv)
    random.seed(0)
    rng = np.random.default_rng(0)
    images = np.clip(rng.uniform(30, 225, (16, 1, 1, 3)) + rng.normal(0, 20, (16, IMAGE, IMAGE, 3)), 0,
                     255).astype(np.float32)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="serve_soak-") as tmp:
        path = Path(tmp) / "soak.onnx"
        write_model(path)
        import onnxruntime as ort

        expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": images})[0]
        proc, host, port, announced = start_server(path, Path(tmp) / "serve.log")
        print(announced, flush=True)
        rss: list = []
        stop = threading.Event()
        started = time.monotonic()
        sampler = threading.Thread(target=rss_sampler, args=(proc.pid, rss, stop, started), daemon=True)
        sampler.start()
        try:
            soak = Soak(host, port, images, expected)
            marks = asyncio.run(run_soak(soak, args.good_clients, args.seconds, rss, started))
            seen = server_metrics(host, port)
        finally:
            stop.set()
            sampler.join()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            log = (Path(tmp) / "serve.log").read_text()
    rss_good_only = rss_at(rss, marks["warm-up, bad clients start"])
    rss_warm = rss_at(rss, marks["warm-up end"])
    rss_end = rss_at(rss, marks["end"])
    server_5xx = {c: n for c, n in seen["codes"].items() if c.startswith("5") and c not in ("503", "504")}
    without = percentiles(soak.latencies.get("baseline", []))
    with_bad = percentiles(soak.latencies.get("hostile", []))
    checks = {
        "no 5xx but 503/504 (server metrics)": not server_5xx,
        "good p99 with bad clients <= 2x without": with_bad.get("p99_ms", 1e9) <= 2 * without.get("p99_ms", 0),
        "RSS at the end within 10 % of RSS after warm-up": abs(rss_end - rss_warm) <= 0.10 * rss_warm,
        "every good answer held its own rows": soak.wrong_rows == 0,
        "the server exited 0 after SIGTERM, no traceback": code == 0 and "Traceback" not in log,
    }
    bad = {}
    for (kind, outcome), n in sorted(soak.bad.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        bad.setdefault(kind, {})[str(outcome)] = n
    good = {}
    for (phase, outcome), n in sorted(soak.good.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        good.setdefault(phase, {})[str(outcome)] = n
    report = {
        "settings": {"seconds": args.seconds, "warmup_s": WARMUP_S, "settle_s": SETTLE_S,
                     "good_clients": args.good_clients, "server": announced.split("  ", 1)[-1],
                     "model": f"onnx.helper classifier, {IMAGE}x{IMAGE}x3 -> {CLASSES}, 2 convolutions",
                     "bad_clients": "malformed every 50 ms, oversized declared every 200 ms and streamed every 3 s, "
                                    "disconnect before answer every 100 ms and mid-body every 200 ms, 1 us deadline "
                                    f"every 200 ms, a flood of {FLOOD} every 10 s, 16 slowloris bodies, 8 slow heads "
                                    "and 16 silent connections at all times (each reconnects when cut)"},
        "environment": {"cpu_threads": os.cpu_count(), "python": platform.python_version(),
                        "load_average_before": [round(v, 2) for v in load_before],
                        "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "phases_s": {k: round(v, 1) for k, v in marks.items()},
        "good": {"without_bad_clients": without, "with_bad_clients": with_bad,
                 "p99_ratio": round(with_bad.get("p99_ms", 0) / max(without.get("p99_ms", 1e-9), 1e-9), 2),
                 "outcomes_by_phase": good, "wrong_rows": soak.wrong_rows},
        "bad": bad,  # the hostile phase's; the warm-up's second half had the same clients
        "bad_in_warm_up": sum(soak.bad_in_warm_up.values()),
        "cut_off_s": {str(status): {"n": len(v), "median": round(float(np.median(v)), 2),
                                    "max": round(float(max(v)), 2)} for status, v in soak.cut_after.items()},
        "server": {"requests_by_code": seen["codes"], "rejected_by_reason": seen["rejected"],
                   "hostile_phase": {key: {k: v - soak.seen_before[key].get(k, 0) for k, v in
                                           soak.seen_after[key].items()} for key in ("codes", "rejected")},
                   "exit_code": code},
        "rss_mb": {"after_good_only_warm_up": round(rss_good_only / 2 ** 20, 1),
                   "after_warm_up": round(rss_warm / 2 ** 20, 1), "end": round(rss_end / 2 ** 20, 1),
                   "max": round(max(v for _, v in rss) / 2 ** 20, 1),
                   "change_percent": round(100 * (rss_end - rss_warm) / rss_warm, 1),
                   "every_second": [[t, round(v / 2 ** 20, 1)] for t, v in rss]},
        "checks": checks,
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("rss_mb",)}, indent=1)[:6000])
    print("rss_mb:", {k: v for k, v in report["rss_mb"].items() if k != "every_second"})
    print(f"wrote {args.json}")
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    main()
