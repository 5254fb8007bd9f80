"""The CLI end to end: run folder, evaluate, one-line errors, resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from conftest import cli

#: cnn_small_bn (BatchNorm like the keras.applications backbones, 3 blocks): the gradual 6-epoch fit of the resume
#: test takes 54 s here against mobilenet_v3_small's 254 s (a loaded 2-core machine; each stage recompiles the model)
FAST = ["--backbone", "cnn_small_bn", "--weights", "none", "--image-size", "32", "--batch-size", "16",
        "--augment", "none", "--refit", "off"]


def test_backbones_lists_the_registry():
    result = cli("backbones", "--json")
    rows = json.loads(result.stdout)
    from tltf import backbones

    assert sorted(r["name"] for r in rows) == sorted(backbones.REGISTRY) and len(rows) == 42
    mnv2 = next(r for r in rows if r["name"] == "mobilenet_v2")
    assert mnv2 == {**mnv2, "params": 2_257_984, "default_size": 224, "blocks": 19}


def test_fit_writes_a_complete_run_folder_and_evaluate_reads_it(image_folder, tmp_path):
    out = tmp_path / "run"
    result = cli("fit", "--data", image_folder, *FAST, "--stage", "finetune", "--epochs", "2", "--out", out,
                 "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["backbone"] == "cnn_small_bn" and metrics["classes"] == ["circle", "square", "triangle"]
    assert [s["name"] for s in metrics["stages"]] == ["head", "all"]
    head, full = metrics["stages"]
    assert head["trainable_params"] < full["trainable_params"] and full["learning_rate"] == head["learning_rate"] / 10
    assert all(s["val_accuracy"] is not None for s in metrics["stages"])
    assert len((out / "history.csv").read_text().strip().splitlines()) == 3  # header + 2 epochs
    assert (out / "curves.png").stat().st_size > 5000 and any((out / "logs").rglob("*tfevents*"))
    assert not (out / "backup").exists()

    import tltf.keras_objects  # noqa: F401  (registers the custom objects; nothing else needed)

    model = keras.models.load_model(out / "model.keras")
    probs = model.predict(np.full((2, 32, 32, 3), 128.0, "float32"), verbose=0)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    result = cli("evaluate", out / "model.keras", "--data", image_folder, "--json")
    report = json.loads(result.stdout)
    assert report["n"] == 36 and set(report["per_class"]) == {"circle", "square", "triangle"}
    confusion = np.array(report["confusion"])  # rows: the true class, columns: the prediction
    assert confusion.sum() == 36 and confusion.sum(axis=1).tolist() == [12, 12, 12]
    assert report["accuracy"] == pytest.approx(np.trace(confusion) / 36, abs=1e-12)
    assert [report["per_class"][name] for name in report["classes"]] == pytest.approx(
        np.diag(confusion) / 12, abs=1e-12)
    # a finished run is not overwritten by accident
    again = cli("fit", "--data", image_folder, *FAST, "--epochs", "2", "--out", out)
    assert again.exit_code == 2 and "already holds a finished run" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["--backbone", "mobilnet_v2"], "did you mean mobilenet_v2"),
    (["--backbone", "inception_v3", "--image-size", "40"], "too small for inception_v3"),
    (["--weights", "missing.weights.h5"], "--weights missing.weights.h5: no such file"),
    (["--data", "nowhere/"], "--data nowhere/: no such file or folder"),
])
def test_bad_input_is_one_line_on_stderr(image_folder, tmp_path, args, message):
    base = {"--data": str(image_folder), "--backbone": "mobilenet_v2", "--image-size": "32", "--weights": "none"}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    flat = [part for kv in base.items() for part in kv]
    result = cli("fit", *flat, "--epochs", "1", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_killed_fit_resumes_from_the_last_finished_epoch(image_folder, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tltf", "fit", "--data", str(image_folder), *FAST, "--stage", "gradual",
           "--epochs", "6", "--out", str(out), "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    meta = out / "backup" / "training_metadata.json"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if meta.exists() and json.loads(meta.read_text() or "{}").get("epoch", 0) >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model.keras").exists()
    done = json.loads(meta.read_text())["epoch"]
    assert 2 <= done < 6
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"resuming {out} from epoch {done + 1}/6" in result.stdout
    epochs = [int(line.split(",")[0]) for line in (out / "history.csv").read_text().splitlines()[1:]]
    assert sorted(set(epochs)) == list(range(6))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s["name"] for s in metrics["stages"]] == ["head", "top1", "top2", "all"]


def test_tensorflow_startup_chatter_is_filtered_and_real_errors_pass(capfd):
    """``import tltf.keras_objects`` (what training commands load first) drops TensorFlow's absl start-up lines
    from fd 2 (C++ writes there, not to sys.stderr) and passes every other line on; the CLI's stderr stays
    clean."""
    import os
    import subprocess
    import sys

    from tltf.quiet import filtered_stderr

    with filtered_stderr():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1795525880.173977   11872 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow\n")
        os.write(2, b"E0000 00:00:1.2 1 real_failure.cc:9] something broke\n")
        print("python warning", file=sys.stderr)
    err = capfd.readouterr().err
    assert sorted(err.splitlines()) == ["E0000 00:00:1.2 1 real_failure.cc:9] something broke", "python warning"]

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "tltf", "fit", "--config", "pipelines/shapes.yaml", "--dry-run"],
                          capture_output=True, text=True, env=env, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "absl::InitializeLog" not in proc.stderr and "cpu_feature_guard" not in proc.stderr, proc.stderr


def test_no_cuda_lines_without_a_gpu(capfd):
    """Without a GPU, the CUDA probe's "failed call to cuInit" (and CUDA diagnostics) are dropped at ``import tltf.keras_objects``
    and never reach the user later; with a GPU a failing cuInit stays visible; ``TF_CPP_MIN_LOG_LEVEL=0`` keeps
    everything."""
    import os
    import subprocess
    import sys

    from tltf.quiet import NO_GPU_NOISE, filtered_stderr, has_gpu_device

    cuinit = b"E0000 00:00:1795925648.266900   24106 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
    with filtered_stderr(NO_GPU_NOISE):
        os.write(2, cuinit)
        os.write(2, b"E0000 00:00:1.2 1 cuda_driver.cc:282] failed call to cuInit: CUDA_ERROR_NO_DEVICE\n")
        os.write(2, b"I0000 00:00:1.2 1 cuda_diagnostics.cc:134] retrieving CUDA diagnostic information for host\n")
        os.write(2, b"I0000 00:00:1.2 1 cudart_stub.cc:31] Could not find cuda drivers on your machine\n")
        os.write(2, b"E0000 00:00:1.2 1 cuda_platform.cc:60] some other CUDA failure\n")
    assert capfd.readouterr().err.splitlines() == ["E0000 00:00:1.2 1 cuda_platform.cc:60] some other CUDA failure"]
    with filtered_stderr():  # the filter used where a GPU is present keeps it
        os.write(2, cuinit)
    assert capfd.readouterr().err.encode() == cuinit

    code = ("import tltf.keras_objects, tensorflow as tf; tf.config.list_physical_devices('GPU'); import keras; "
            "keras.layers.Dense(2)(tf.zeros((1, 3)))")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    if not has_gpu_device():
        assert "cuInit" not in quiet.stderr and "cuda" not in quiet.stderr.lower(), quiet.stderr
    loud = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=env | {"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "absl::InitializeLog" in loud.stderr, loud.stderr
