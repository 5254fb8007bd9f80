"""Latency and throughput of an exported model in onnxruntime and, side by side, of its Keras original.

Each (runtime, batch size) pair gets a warm-up, then timed forward passes on a fixed random batch of raw pixels
(float32 RGB 0..255, the models' shared input): at least ``min_iters``, then more until ``min_time_s`` has passed
or ``max_iters`` are done. Each pass is timed alone (``time.perf_counter``), so p50/p90/p99 are per-call
latencies; ``images_per_s`` is ``batch_size x passes / total time``.

- onnxruntime: a tuned session (:mod:`tltf.runtime.onnx_model`). On CPU, unless ``threads`` is given, all cores with
  and without spin-waiting and one thread race on a short probe and the fastest is timed (``threads``/``spinning``
  in the result): on a busy machine one thread often wins. On CUDA/TensorRT the input is copied to the device
  once and bound with IO binding, outputs stay on the device, so the timing is the model, not PCIe copies.
- Keras: ``model(x, training=False)`` inside a ``tf.function`` with a fixed input signature, the fast path for
  a Keras model (``model.predict`` adds per-call overhead). XLA (``jit_compile=True``) is measured too when
  ``xla="auto"`` and the faster of the two is reported (``"xla": true/false`` in the result). On this project's
  CPU, XLA lost for every convnet measured (batch 1, 224 px: MobileNetV3Small 6 ms plain vs 28 ms XLA,
  ResNet50 44 vs 49 ms); on GPUs it usually wins.

>>> bench = run_bench("exported/a.onnx", keras_model="runs/a/model.keras", batch_sizes=(1, 8))  # doctest: +SKIP
>>> [(r["runtime"], r["batch_size"], round(r["p50_ms"], 1)) for r in bench["results"]]       # doctest: +SKIP
[('onnxruntime', 1, 2.1), ('keras', 1, 9.8), ('onnxruntime', 8, 9.5), ('keras', 8, 30.2)]
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Callable

import numpy as np

from tltf.errors import TltfError
from tltf.export.latency import Timing, compare_latency, measure  # noqa: F401  (tltf.bench.runner.* as before)
from tltf.export.precision import DEFAULT as DEFAULT_PRECISION


def parse_batch_sizes(text: str | None, option: str = "--batch-sizes") -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``; anything else is a one-line error."""
    if text is None or not str(text).strip():
        return [1, 8, 32]
    try:
        sizes = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise TltfError(f"{option} {text}: expected comma-separated integers, e.g. 1,8,32") from None
    if not sizes or any(s < 1 for s in sizes):
        raise TltfError(f"{option} {text}: batch sizes must be positive integers")
    return sorted(set(sizes))


def summarise(times_s: list[float], batch_size: int) -> dict:
    """p50/p90/p99 in milliseconds, mean, and throughput from per-call times."""
    t = np.asarray(times_s, np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "mean_ms": float(t.mean()),
        "min_ms": float(t.min()),
        "images_per_s": float(batch_size * len(t) / (t.sum() / 1000.0)),
        "iterations": int(len(t)),
    }


# --- onnxruntime ---------------------------------------------------------------------------------------------------

class OnnxRunner:
    """onnxruntime sessions prepared per batch size (IO binding on GPU providers).

    On CPU with ``threads=None`` three configurations race on a short probe for each batch size -- all cores with
    spin-waiting threads, all cores without, one thread -- and the fastest is timed (``threads`` and ``spinning``
    in the result): which one wins depends on the model, the batch and how busy the machine is.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, provider: str = "cpu", threads: int | None = None, max_batch: int = 32):
        from tltf.runtime.onnx_model import OnnxModel, cpu_threads

        self.provider = provider
        self.label = provider
        if provider == "cpu" and threads is None:
            cores = cpu_threads()
            configs = list(dict.fromkeys([(cores, True), (cores, False), (1, True)]))
        else:
            configs = [(threads, None)]
        self.models = [(t, spin, OnnxModel(path, provider=provider, threads=t, max_batch=max_batch, spinning=spin))
                       for t, spin in configs]
        self.model = self.models[0][2]
        self.name = Path(path).name
        self.precision = self.model.metadata.get("precision", DEFAULT_PRECISION)
        self.image_size = tuple(self.model.image_size)
        self.chosen: dict[int, dict] = {}

    def step_with(self, model, pixels: np.ndarray) -> Callable[[], object]:
        session, name, out = model.session, model.input_name, model.output_name
        x = np.ascontiguousarray(pixels, dtype=model.input_dtype)
        if self.provider == "cpu":
            return lambda: session.run([out], {name: x})
        import onnxruntime as ort

        binding = session.io_binding()
        device = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding.bind_ortvalue_input(name, device)
        binding.bind_output(out, "cuda", 0)

        def step():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        return step

    def step_for(self, pixels: np.ndarray, probe: Timing | None = None) -> Callable[[], object]:
        batch = int(pixels.shape[0])
        best, best_time = None, float("inf")
        for _, _, model in self.models:
            step = self.checked(self.step_with(model, pixels), batch)
            if len(self.models) == 1:
                best = (model, step)
                break
            t = float(np.median(measure(step, probe or Timing(3, 5, 50, 0.3))))
            if t < best_time:
                best, best_time = (model, step), t
        model, step = best
        self.chosen[batch] = {"threads": model.threads, "spinning": model.spinning}
        return step

    def checked(self, step: Callable[[], object], batch: int) -> Callable[[], object]:
        """``step`` after one trial call: a graph onnxruntime cannot run is a one-line error, not a traceback."""
        from tltf.runtime.onnx_model import run_failure

        try:
            step()
        except Exception as e:  # onnxruntime's Fail, InvalidArgument, RuntimeException, ...
            raise TltfError(f"{self.model.path}: onnxruntime failed to run it at batch {batch} "
                            f"({run_failure(e)})") from None
        return step


# --- Keras ---------------------------------------------------------------------------------------------------------

class KerasRunner:
    """A Keras model called as ``tf.function`` (optionally XLA-compiled) with a fixed input signature."""

    runtime = "keras"

    def __init__(self, model, xla: str | bool = "auto"):
        from tltf.extras import training_stack

        training_stack("bench --keras")
        import tensorflow as tf

        from tltf.export.onnx import inference_model, load_keras, model_info

        self.name = Path(model).name if isinstance(model, (str, Path)) else (getattr(model, "name", None) or "keras")
        if isinstance(model, (str, Path)):
            model = load_keras(model)
        self.model = inference_model(model)
        self.image_size = tuple(model_info(self.model)["image_size"])
        self.xla = xla
        self.device = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"
        self.label = self.device
        self.chosen_xla: dict[int, bool] = {}

    def _function(self, batch: int, jit: bool):
        import tensorflow as tf

        h, w = self.image_size
        model = self.model
        spec = tf.TensorSpec((batch, h, w, 3), tf.float32)

        @tf.function(input_signature=[spec], jit_compile=jit, reduce_retracing=True)
        def forward(x):
            return model(x, training=False)

        return forward

    def step_for(self, pixels: np.ndarray, probe: Timing | None = None) -> Callable[[], object]:
        """The timed step for this batch; with ``xla="auto"`` XLA and plain graphs race on ``probe`` first."""
        import tensorflow as tf

        x = tf.constant(np.ascontiguousarray(pixels, np.float32))
        batch = int(pixels.shape[0])
        options = {"auto": [False, True], True: [True], False: [False]}.get(self.xla, [False])
        best, best_time = None, float("inf")
        for jit in options:
            fn = self._function(batch, jit)
            try:
                fn(x).numpy()  # trace / compile outside the timing
            except Exception:  # XLA may refuse an op: keep the graph without it
                if len(options) == 1:
                    raise
                continue
            if len(options) == 1:
                best = (jit, fn)
                break
            t = float(np.median(measure(lambda: fn(x).numpy(), probe or Timing(3, 5, 10, 0.5))))
            if t < best_time:
                best, best_time = (jit, fn), t
        jit, fn = best
        self.chosen_xla[batch] = jit
        return lambda: fn(x).numpy()


# --- the whole benchmark -------------------------------------------------------------------------------------------

def run_bench(onnx_path, keras_model=None, batch_sizes=(1, 8, 32), provider: str = "cpu",
              timing: Timing | None = None, xla: str | bool = "auto", threads: int | None = None,
              progress: bool = False, seed: int = 0) -> dict:
    """Benchmark ``onnx_path`` -- one ``.onnx`` file, or several (say fp32 and int8 exports of one model) timed
    side by side -- and ``keras_model`` (a path or a model), if given, at each batch size.

    Returns ``{"results": [{"runtime", "provider", "batch_size", "p50_ms", "p90_ms", "p99_ms", "images_per_s",
    "model", ...}], "speedups": [...], "environment": {...}}``. ``progress=True`` shows a rich progress bar.
    """
    timing = timing or Timing()
    sizes = [int(b) for b in batch_sizes]
    paths = [onnx_path] if isinstance(onnx_path, (str, Path)) else list(onnx_path)
    runners: list = [OnnxRunner(p, provider=provider, threads=threads, max_batch=max(sizes)) for p in paths]
    for path, runner in zip(paths[1:], runners[1:]):
        if runner.image_size != runners[0].image_size:
            raise TltfError(f"{path}: input size {runner.image_size} differs from {paths[0]}'s "
                            f"{runners[0].image_size}")
    if keras_model is not None:
        keras_runner = KerasRunner(keras_model, xla=xla)
        if keras_runner.image_size != runners[0].image_size:
            raise TltfError(f"--keras: input size {keras_runner.image_size} differs from {paths[0]}'s "
                            f"{runners[0].image_size}")
        runners.append(keras_runner)
    h, w = runners[0].image_size
    rng = np.random.default_rng(seed)
    results = []
    with _progress(progress) as bar:
        for batch in sizes:
            pixels = rng.uniform(0, 255, (batch, h, w, 3)).astype(np.float32)
            for runner in runners:
                desc = f"{runner.name} batch {batch}"
                task = bar.add_task(desc, total=timing.warmup + timing.max_iters) if bar else None
                step = runner.step_for(pixels)
                times = measure(step, timing, (lambda n, t=task: bar.advance(t, n)) if bar else None)
                if bar:
                    bar.update(task, total=timing.warmup + len(times), completed=timing.warmup + len(times))
                row = {"runtime": runner.runtime, "provider": runner.label, "batch_size": batch,
                       "model": runner.name, **summarise(times, batch)}
                if runner.runtime == "keras":
                    row["xla"] = bool(runner.chosen_xla.get(batch, False))
                else:
                    row.update(runner.chosen.get(batch, {}), precision=runner.precision)
                results.append(row)
    return {"results": results, "speedups": speedups(results), "model": str(paths[0]),
            "models": [str(p) for p in paths],
            "keras_model": str(keras_model) if isinstance(keras_model, (str, Path)) else
            (getattr(keras_model, "name", None) if keras_model is not None else None),
            "environment": environment(provider, threads)}


def speedups(results: list[dict]) -> list[dict]:
    """Per ONNX file and batch size, Keras p50 / onnxruntime p50 (how many times faster onnxruntime is)."""
    keras_rows = {r["batch_size"]: r for r in results if r["runtime"] == "keras"}
    out = []
    for row in sorted((r for r in results if r["runtime"] == "onnxruntime"), key=lambda r: r["batch_size"]):
        keras_row = keras_rows.get(row["batch_size"])
        if keras_row:
            out.append({"batch_size": row["batch_size"], "model": row.get("model"),
                        "p50_ratio": keras_row["p50_ms"] / row["p50_ms"],
                        "throughput_ratio": row["images_per_s"] / keras_row["images_per_s"]})
    return out


def fastest(results: list[dict]) -> list[dict]:
    """Per batch size, the ONNX file with the lowest p50 (for choosing between, say, fp32 and int8 exports)."""
    out = []
    for batch in sorted({r["batch_size"] for r in results}):
        rows = sorted((r for r in results if r["runtime"] == "onnxruntime" and r["batch_size"] == batch),
                      key=lambda r: r["p50_ms"])
        if rows:
            out.append({"batch_size": batch, "model": rows[0].get("model"), "p50_ms": rows[0]["p50_ms"],
                        "others": {r.get("model"): r["p50_ms"] for r in rows[1:]}})
    return out


def environment(provider: str = "cpu", threads: int | None = None) -> dict:
    """The machine and library versions of a benchmark; TensorFlow's only where it is already loaded (a Keras
    runner ran): recording a version is no reason to load it."""
    import sys

    import onnxruntime as ort

    from tltf.runtime.onnx_model import cpu_threads

    env = {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
           "python": platform.python_version(), "onnxruntime": ort.__version__, "provider": provider,
           "threads": int(threads or cpu_threads())}
    if "tensorflow" in sys.modules:
        env["tensorflow"] = sys.modules["tensorflow"].__version__
    return env


class _NoBar:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool):
    if not enabled:
        return _NoBar()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=False)
