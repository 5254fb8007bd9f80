"""``tltf bench --runtime onnxruntime,openvino,opencv``: the same file timed on each runtime, after checking that the
runtime answers like onnxruntime (:func:`tltf.export.portability.check`): a runtime that gets the file wrong is
refused with one line and not timed, since its speed would be the speed of a wrong answer.

Each runtime runs on the CPU with the same thread count (``threads``, default all the cores this process may use)
on the same fixed random batch per batch size, timed pass by pass like :func:`tltf.bench.runner.run_bench`.
The agreement is measured on 16 structured synthetic images (:func:`tltf.export.parity.synthetic_images`) unless
``images`` are given. OpenVINO computes in f32 unless ``openvino_precision="bf16"``.

>>> bench = run_runtimes(["exported/a.onnx"], ["onnxruntime", "openvino", "opencv"], batch_sizes=(1,))  # doctest: +SKIP
>>> [(r["runtime"], round(r["p50_ms"], 2), r["top1_agreement"]) for r in bench["results"]]          # doctest: +SKIP
[('onnxruntime', 1.05, 1.0), ('openvino', 0.91, 1.0), ('opencv', 2.3, 1.0)]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tltf.errors import TltfError, first_line
from tltf.export import portability
from tltf.export.latency import Timing, measure


def run_runtimes(paths, runtimes, batch_sizes=(1,), timing: Timing | None = None, threads: int | None = None,
                 openvino_precision: str = "f32", images: np.ndarray | None = None, seed: int = 0) -> dict:
    """Check then time each file of ``paths`` on each of ``runtimes``; returns ``{"results": [{"runtime",
    "provider", "batch_size", "model", "p50_ms", ..., "top1_agreement", "max_abs_diff"}], "checks": {file:
    {runtime: check}}, "refused": [one line per refused runtime and file], "environment": {...}}``."""
    from tltf.bench.runner import environment, summarise
    from tltf.export.parity import synthetic_images
    from tltf.runtime.onnx_model import OnnxModel, cpu_threads

    timing = timing or Timing()
    threads = int(threads or cpu_threads())
    runtimes = list(runtimes)
    if "onnxruntime" not in runtimes:
        runtimes.insert(0, "onnxruntime")  # the reference every other runtime is compared with
    results, checks, refused = [], {}, []
    rng = np.random.default_rng(seed)
    for path in map(Path, paths):
        h, w = OnnxModel(path, threads=1).image_size
        check_images = synthetic_images(16, (h, w), seed=seed) if images is None else images
        others = [r for r in runtimes if r != "onnxruntime"]
        rows = portability.check(path, check_images, others, openvino_precision=openvino_precision)
        checks[path.name] = rows
        refused += [row["refused"] for row in rows.values() if not row["ok"]]
        timed = ["onnxruntime"] + [r for r in others if rows[r]["ok"]]
        runs = {r: portability.load(r, path, threads=threads, openvino_precision=openvino_precision)
                for r in timed}
        for batch in batch_sizes:
            pixels = np.ascontiguousarray(rng.uniform(0, 255, (int(batch), h, w, 3)), np.float32)
            for runtime in timed:
                run = runs[runtime]
                try:
                    run(pixels)
                except Exception as e:  # a runtime that cannot run this batch size
                    first = first_line(e)
                    raise TltfError(f"{path}: {runtime} failed to run it at batch {batch} ({first})") from None
                times = measure(lambda run=run: run(pixels), timing)
                agreement = rows.get(runtime, {"top1_agreement": 1.0, "max_abs_diff": 0.0})
                results.append({"runtime": runtime, "provider": "cpu", "batch_size": int(batch), "model": path.name,
                                "threads": threads, "version": portability.version(runtime),
                                **({"inference_precision": openvino_precision} if runtime == "openvino" else {}),
                                "top1_agreement": agreement["top1_agreement"],
                                "max_abs_diff": agreement["max_abs_diff"], **summarise(times, int(batch))})
    env = environment("cpu", threads)
    env |= {r: portability.version(r) for r in runtimes}
    return {"results": results, "speedups": [], "checks": checks, "refused": refused,
            "model": str(paths[0]), "models": [str(p) for p in paths], "runtimes": runtimes, "environment": env}
