"""Load test of ``tltf serve``: throughput and p50/p99 latency at 1, 4 and 16 concurrent clients, with and without
dynamic batching, next to onnxruntime called in-process.

    python benchmarks/serve_load.py [--backbone mobilenet_v3_small] [--image-size 224] [--requests 600]
                                    [--seconds 2.5] [--rounds 3] [--json benchmarks/serve_load.json]

A tltf classifier (random weights, 10 classes) is exported to ONNX, then:

- **in-process**: ``C`` threads each calling ``session.run`` on one image in a loop (the same tuned session the
  server makes), and one thread running batches of 16 images (the ceiling batching can approach);
- **served**: ``tltf serve`` in a subprocess on 127.0.0.1, one per setting -- ``--max-batch 32 --max-delay-ms 5``
  (the defaults), ``--max-batch 32 --max-delay-ms 0`` (batch only what is queued) and ``--max-batch 1`` (no
  batching) -- with ``C`` closed-loop clients (Triton's asyncio HTTP client, binary tensors, one 224x224 image per
  request: each sends its next request when its answer arrives). The server's /metrics give the mean batch.

Each cell runs at most ``--requests`` requests or ``--seconds`` seconds after a short warm-up, in ``--rounds``
interleaved rounds (all settings in each round, the three servers up at once), and the median of the rounds is
reported, so a burst of load from elsewhere on a shared machine hits every setting alike; the whole run is bounded
(about two and a half minutes on 2 cores). Clients and servers share the machine's cores: on a small machine the
client's own CPU time lowers the served figures; the load average is recorded before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

CONCURRENCY = (1, 4, 16)
SETTINGS = {  # name -> tltf serve options
    "batching (max-batch 32, 5 ms)": ["--max-batch", "32", "--max-delay-ms", "5"],
    "batching (max-batch 32, 0 ms)": ["--max-batch", "32", "--max-delay-ms", "0"],
    "no batching (max-batch 1)": ["--max-batch", "1"],
}
WARMUP = 10


def summarise(latencies_s: list[float], seconds: float, rows: int | None = None) -> dict:
    ms = np.asarray(latencies_s) * 1000.0
    images = rows if rows is not None else len(ms)
    return {"requests": len(ms), "seconds": round(seconds, 3), "throughput_per_s": round(images / seconds, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


# --- in-process ------------------------------------------------------------------------------------------------

def in_process(path: Path, x: np.ndarray, concurrency: int, max_requests: int, max_seconds: float) -> dict:
    """``concurrency`` threads calling one tuned session with one image each, until the budget is spent."""
    from tltf.runtime.onnx_model import make_session

    session = make_session(path, spinning=False)
    feed = {session.get_inputs()[0].name: x[:1]}
    for _ in range(WARMUP):
        session.run(None, feed)
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds

    def client():
        while time.perf_counter() < deadline:
            with lock:
                if len(latencies) >= max_requests:
                    return
            t = time.perf_counter()
            session.run(None, feed)
            with lock:
                latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarise(latencies, time.perf_counter() - start)


def in_process_batched(path: Path, x: np.ndarray, batch: int, max_requests: int, max_seconds: float) -> dict:
    """One thread running batches of ``batch`` images: throughput counts images, latency is per call."""
    from tltf.runtime.onnx_model import make_session

    session = make_session(path, spinning=False)
    feed = {session.get_inputs()[0].name: np.repeat(x[:1], batch, axis=0)}
    session.run(None, feed)
    latencies: list[float] = []
    start = time.perf_counter()
    while len(latencies) * batch < max_requests and time.perf_counter() - start < max_seconds:
        t = time.perf_counter()
        session.run(None, feed)
        latencies.append(time.perf_counter() - t)
    return summarise(latencies, time.perf_counter() - start, rows=len(latencies) * batch)


# --- served ----------------------------------------------------------------------------------------------------

def start_server(path: Path, options: list[str], log: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-m", "tltf", "serve", str(path), "--port", "0", *options],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    return proc, log


def wait_ready(proc: subprocess.Popen, log: Path) -> str:
    """The ``host:port`` the server announces once it is ready."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = re.search(r"tltf serve: http://([\d.]+:\d+)", log.read_text())
        if found:
            return found.group(1)
        if proc.poll() is not None:
            raise SystemExit(f"tltf serve exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"tltf serve did not start:\n{log.read_text()}")


def batch_counters(address: str, model: str) -> tuple[float, float]:
    """``(rows, onnxruntime calls)`` so far, from the server's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples
              if s.labels.get("model") == model and s.name.startswith("tltf_serve_batch_rows_")}
    return values.get("tltf_serve_batch_rows_sum", 0.0), values.get("tltf_serve_batch_rows_count", 0.0)


async def served(address: str, model: str, x: np.ndarray, concurrency: int, max_requests: int,
                 max_seconds: float) -> dict:
    """``concurrency`` closed-loop clients (tritonclient's asyncio HTTP client), one image per request."""
    import tritonclient.http as httpclient
    import tritonclient.http.aio as aioclient

    client = aioclient.InferenceServerClient(address, conn_limit=concurrency + 1, conn_timeout=120)
    tensor = httpclient.InferInput("pixels", list(x[:1].shape), "FP32")
    tensor.set_data_from_numpy(x[:1])
    outputs = [httpclient.InferRequestedOutput("probabilities")]
    try:
        await asyncio.gather(*[client.infer(model, [tensor], outputs=outputs) for _ in range(WARMUP)])
        rows_before, calls_before = batch_counters(address, model)
        latencies: list[float] = []
        deadline = time.perf_counter() + max_seconds

        async def one_client():
            while time.perf_counter() < deadline and len(latencies) < max_requests:
                t = time.perf_counter()
                result = await client.infer(model, [tensor], outputs=outputs)
                latencies.append(time.perf_counter() - t)
                assert result.as_numpy("probabilities").shape == (1, 10)

        start = time.perf_counter()
        await asyncio.gather(*[one_client() for _ in range(concurrency)])
        elapsed = time.perf_counter() - start
        rows_after, calls_after = batch_counters(address, model)
    finally:
        await client.close()
    row = summarise(latencies, elapsed)
    row["mean_batch_rows"] = round((rows_after - rows_before) / max(1.0, calls_after - calls_before), 2)
    return row


# --- main ------------------------------------------------------------------------------------------------------

def export_model(backbone: str, image_size: int, folder: Path) -> Path:
    import keras

    from tltf.export.onnx import export_onnx
    from tltf.export.parity import spread_random_model
    from tltf.models.classifier import build_classifier

    keras.utils.set_random_seed(0)
    model = spread_random_model(build_classifier(backbone, [f"class_{i}" for i in range(10)],
                                                 image_size=image_size, weights="none"))
    path = folder / f"{backbone}.onnx"
    export_onnx(model, path)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="mobilenet_v3_small")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--requests", type=int, default=600, help="most measured requests per cell and round")
    parser.add_argument("--seconds", type=float, default=2.5, help="most measured seconds per cell and round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--json", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args(argv)

    from tltf.runtime.onnx_model import cpu_threads

    started = time.perf_counter()
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    x = (rng.random((1, args.image_size, args.image_size, 3), dtype=np.float32) * 255).astype(np.float32)
    cells: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="serve_load-") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        path = export_model(args.backbone, args.image_size, folder)
        print(f"exported {path.name} in {time.perf_counter() - t:.1f} s", flush=True)
        servers = {mode: start_server(path, options, folder / f"serve-{i}.log")
                   for i, (mode, options) in enumerate(SETTINGS.items())}
        try:
            addresses = {mode: wait_ready(proc, log) for mode, (proc, log) in servers.items()}
            for r in range(args.rounds):  # every setting in every round: a burst of load hits them all alike
                for c in CONCURRENCY:
                    measured = {"in-process (threads, batch 1)": lambda: in_process(
                        path, x, c, args.requests, args.seconds)}
                    if c == 1:
                        measured["in-process (one thread, batch 16)"] = lambda: in_process_batched(
                            path, x, 16, args.requests * 4, args.seconds)
                    for mode, address in addresses.items():
                        measured[f"served, {mode}"] = lambda a=address: asyncio.run(
                            served(a, path.stem, x, c, args.requests, args.seconds))
                    for mode, run in measured.items():
                        row = run()
                        cells.setdefault((mode, c), []).append(row)
                        print(f"round {r + 1} {mode} x{c}: {row}", flush=True)
        finally:
            codes = {}
            for mode, (proc, log) in servers.items():
                proc.send_signal(signal.SIGTERM)
                codes[mode] = proc.wait(timeout=60)
        bad = {mode: code for mode, code in codes.items() if code != 0}
        if bad:
            raise SystemExit(f"tltf serve did not exit with 0 after SIGTERM: {bad}")
    import onnxruntime

    rows = [median_row(mode, c, runs) for (mode, c), runs in sorted(cells.items(), key=lambda kv: (
        order(kv[0][0]), kv[0][1]))]
    report = {
        "model": {"backbone": args.backbone, "image_size": args.image_size, "classes": 10, "weights": "random"},
        "settings": {"requests_per_cell": args.requests, "seconds_per_cell": args.seconds, "rounds": args.rounds,
                     "warmup": WARMUP, "request": "one image per request, binary tensor data (tritonclient.http.aio)",
                     "server": "tltf serve on 127.0.0.1, default --threads (all cores), client on the same cores",
                     "reported": "median of the rounds for each figure"},
        "environment": {"cpu_threads": cpu_threads(), "python": platform.python_version(),
                        "onnxruntime": onnxruntime.__version__,
                        "load_average_before": [round(v, 2) for v in load_before],
                        "load_average_after": [round(v, 2) for v in os.getloadavg()]},
        "total_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"wrote {args.json} in {report['total_seconds']} s")
    return report


def order(mode: str) -> int:
    modes = ["in-process (threads, batch 1)", "in-process (one thread, batch 16)", *(f"served, {m}" for m in SETTINGS)]
    return modes.index(mode)


def median_row(mode: str, concurrency: int, runs: list[dict]) -> dict:
    """One cell: the median of its rounds for each figure, and the rounds' throughputs."""
    row = {"mode": mode, "concurrency": concurrency}
    for key in ("throughput_per_s", "p50_ms", "p99_ms", "mean_batch_rows"):
        values = [r[key] for r in runs if r.get(key) is not None]
        if values:
            row[key] = round(float(np.median(values)), 2)
    row["requests"] = sum(r["requests"] for r in runs)
    row["rounds_throughput_per_s"] = [r["throughput_per_s"] for r in runs]
    return row


def table(rows: list[dict]) -> str:
    """The results as a Markdown table."""
    lines = ["| mode | clients | throughput (img/s) | p50 (ms) | p99 (ms) | mean batch | rounds (img/s) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        batch = r.get("mean_batch_rows")
        rounds = ", ".join(f"{v:.0f}" for v in r["rounds_throughput_per_s"])
        lines.append(f"| {r['mode']} | {r['concurrency']} | {r['throughput_per_s']:.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {'' if batch is None else f'{batch:.1f}'} | {rounds} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
