"""`tltf bench`: onnxruntime vs Keras timings, the JSON schema, the plot, provider handling."""

import json

import numpy as np
import pytest
from conftest import cli

from tltf.bench.runner import Timing, parse_batch_sizes, run_bench, summarise
from tltf.errors import TltfError

ROW_KEYS = {"runtime", "provider", "batch_size", "p50_ms", "p90_ms", "p99_ms", "images_per_s"}
FAST = Timing(warmup=1, min_iters=4, max_iters=4, min_time_s=0.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import keras

    from tltf.export.onnx import export_onnx
    from tltf.export.parity import spread_random_model
    from tltf.models.classifier import build_classifier

    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("bench")
    model = spread_random_model(build_classifier("cnn_small_bn", ["a", "b"], image_size=32, weights="none"))
    model.save(folder / "model.keras")
    export_onnx(folder / "model.keras", folder / "tiny.onnx")
    return {"keras": folder / "model.keras", "onnx": folder / "tiny.onnx", "folder": folder}


def _check_rows(rows, runtimes, sizes):
    assert {(r["runtime"], r["batch_size"]) for r in rows} == {(rt, b) for rt in runtimes for b in sizes}
    for r in rows:
        assert ROW_KEYS <= set(r)
        assert 0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["images_per_s"] == pytest.approx(r["batch_size"] * 1000.0 / r["mean_ms"], rel=1e-6)
        assert r["provider"] == "cpu"


def test_run_bench_times_both_runtimes_per_batch_size(tiny):
    bench = run_bench(tiny["onnx"], keras_model=tiny["keras"], batch_sizes=[1, 3], timing=FAST, xla=False)
    _check_rows(bench["results"], ["onnxruntime", "keras"], [1, 3])
    assert all(r["iterations"] == 4 for r in bench["results"])
    assert [r["xla"] for r in bench["results"] if r["runtime"] == "keras"] == [False, False]
    for r in bench["results"]:
        if r["runtime"] == "onnxruntime":  # the fastest of the probed thread/spinning settings
            assert r["threads"] >= 1 and isinstance(r["spinning"], bool)
    ratios = {s["batch_size"]: s["p50_ratio"] for s in bench["speedups"]}
    by = {(r["runtime"], r["batch_size"]): r for r in bench["results"]}
    assert ratios[3] == pytest.approx(by["keras", 3]["p50_ms"] / by["onnxruntime", 3]["p50_ms"])
    assert bench["environment"]["onnxruntime"] and bench["environment"]["threads"] >= 1


def test_onnx_only_bench_and_xla_auto_choice(tiny):
    bench = run_bench(tiny["onnx"], batch_sizes=[2], timing=FAST)
    _check_rows(bench["results"], ["onnxruntime"], [2])
    assert bench["speedups"] == []
    auto = run_bench(tiny["onnx"], keras_model=tiny["keras"], batch_sizes=[1], timing=FAST, xla="auto")
    keras_row = next(r for r in auto["results"] if r["runtime"] == "keras")
    assert isinstance(keras_row["xla"], bool)  # whichever of XLA / plain graph measured faster


def test_cli_bench_writes_json_schema_and_png(tiny, tmp_path):
    out = tmp_path / "bench.json"
    result = cli("bench", tiny["onnx"], "--keras", tiny["keras"], "--batch-sizes", "2,1", "--iterations", "3",
                 "--warmup", "1", "--xla", "off", "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    _check_rows(data["results"], ["onnxruntime", "keras"], [1, 2])
    assert [r["batch_size"] for r in data["results"]] == [1, 1, 2, 2]  # sorted batch sizes
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ratio = next(s["p50_ratio"] for s in data["speedups"] if s["batch_size"] == 1)
    words = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
    assert f"batch 1: onnxruntime is {words} than Keras (p50)" in " ".join(result.stdout.split())


def test_cli_bench_says_slower_below_1x_and_faster_above(tiny, tmp_path, monkeypatch):
    """The verdict line follows the measured ratio: below 1x it is the inverse ratio, "slower" (it used to print
    "0.80x faster")."""
    import tltf.bench.runner as runner

    real = runner.run_bench(tiny["onnx"], keras_model=tiny["keras"], batch_sizes=[1, 2], timing=FAST, xla=False)
    for s in real["speedups"]:
        s["p50_ratio"] = {1: 0.8, 2: 2.5}[s["batch_size"]]
    monkeypatch.setattr(runner, "run_bench", lambda *args, **kwargs: real)
    result = cli("bench", tiny["onnx"], "--keras", tiny["keras"], "--batch-sizes", "1,2", "--json",
                 tmp_path / "b.json")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    assert "batch 1: onnxruntime is 1.25x slower than Keras (p50)" in text
    assert "batch 2: onnxruntime is 2.50x faster than Keras (p50)" in text
    assert "0.80x faster" not in text


def test_cli_bench_times_several_onnx_files_side_by_side(tiny, tmp_path):
    """fp32 and fp16 exports of one model and its Keras original in one run: rows, ratios and the verdict per file."""
    from tltf.export.onnx import export_onnx

    half = tmp_path / "tiny_fp16.onnx"
    export_onnx(tiny["keras"], half, precision="fp16")
    out = tmp_path / "both.json"
    result = cli("bench", tiny["onnx"], half, "--keras", tiny["keras"], "--batch-sizes", "1,2", "--iterations", "3",
                 "--warmup", "1", "--xla", "off", "--json", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    names = ("tiny.onnx", "tiny_fp16.onnx", "model.keras")
    assert sorted((r["model"], r["batch_size"]) for r in data["results"]) == sorted(
        (n, b) for n in names for b in (1, 2))
    assert {r["model"]: r.get("precision") for r in data["results"]} == {
        "tiny.onnx": "fp32", "tiny_fp16.onnx": "fp16", "model.keras": None}
    by = {(r["model"], r["batch_size"]): r for r in data["results"]}
    assert len(data["speedups"]) == 4
    for s in data["speedups"]:
        assert s["p50_ratio"] == pytest.approx(by["model.keras", s["batch_size"]]["p50_ms"]
                                               / by[s["model"], s["batch_size"]]["p50_ms"])
    winner = min(("tiny.onnx", "tiny_fp16.onnx"), key=lambda n: by[n, 1]["p50_ms"])
    assert f"batch 1: fastest here is {winner}" in " ".join(result.stdout.split())
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = cli("bench", tiny["onnx"], tiny["onnx"])
    assert result.exit_code == 2 and "different names" in result.stderr


def test_cli_bench_errors(tiny, tmp_path):
    result = cli("bench", tiny["onnx"], "--batch-sizes", "1,x")
    assert result.exit_code == 2 and "--batch-sizes 1,x" in result.stderr
    result = cli("bench", tiny["keras"])
    assert result.exit_code == 2 and "expected an .onnx file" in result.stderr
    result = cli("bench", tmp_path / "none.onnx")
    assert result.exit_code == 2 and "no such model file" in result.stderr


def test_unavailable_gpu_provider_is_a_clear_error(tiny):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    result = cli("bench", tiny["onnx"], "--provider", "cuda", "--iterations", "1")
    assert result.exit_code == 2
    assert "--provider cuda" in result.stderr and "CUDAExecutionProvider" in result.stderr
    assert "onnxruntime-gpu" in result.stderr and "Traceback" not in result.output


def test_gpu_provider_options_are_tuned(monkeypatch, tmp_path):
    """CUDA/TensorRT cannot run here: check the options handed to onnxruntime instead."""
    import onnxruntime as ort

    from tltf.runtime.onnx_model import provider_list

    monkeypatch.setattr(ort, "get_available_providers", lambda: [
        "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    (trt, trt_opts), (cuda, cuda_opts), cpu = provider_list("tensorrt", (32, 48), max_batch=8, cache_dir=tmp_path)
    assert (trt, cuda, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert trt_opts["trt_fp16_enable"] and trt_opts["trt_engine_cache_enable"]
    assert trt_opts["trt_engine_cache_path"] == str(tmp_path / "trt") and (tmp_path / "trt").is_dir()
    assert trt_opts["trt_profile_min_shapes"] == "pixels:1x32x48x3"
    assert trt_opts["trt_profile_max_shapes"] == "pixels:8x32x48x3"
    assert cuda_opts["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert provider_list("cuda")[0][0] == "CUDAExecutionProvider"
    with pytest.raises(TltfError, match="--provider npu: unknown"):
        provider_list("npu")


def test_cpu_session_options():
    import onnxruntime as ort

    from tltf.runtime.onnx_model import cpu_threads, session_options

    so = session_options("cpu")
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert so.intra_op_num_threads == cpu_threads() and so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_parse_batch_sizes_and_summary():
    assert parse_batch_sizes("32,1, 8,8") == [1, 8, 32]
    for bad in ("0", "a", ","):
        with pytest.raises(TltfError):
            parse_batch_sizes(bad)
    s = summarise([0.001] * 98 + [0.002, 0.010], batch_size=4)
    assert s["p50_ms"] == pytest.approx(1.0) and s["p99_ms"] > 2.0 and s["iterations"] == 100
    assert s["images_per_s"] == pytest.approx(4 * 100 / np.sum([0.001] * 98 + [0.002, 0.010]))
