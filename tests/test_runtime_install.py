"""The inference runtime installed alone, as users get it: ``pip install tltf`` with no extras, in a fresh venv.

The venv is built from this repository's working tree (its ``pyproject.toml``, ``README.md`` and ``tltf/`` copied
to a temporary folder, so that the build's ``build/`` and ``*.egg-info`` stay out of the checkout; non-editable;
pip's own cache may be used). Then, with that venv's own ``tltf``: no training stack installed, site-packages at
most :data:`MAX_SITE_PACKAGES_MB`, and ``predict``, ``serve`` (v2 infer, a v1 image upload, SIGTERM), ``bench``,
a training command's one-line error, and ``Dockerfile.serve``'s entrypoint and health check (no Docker engine
needed). A registry that cannot be reached fails those tests with pip's own error (marked ``network`` and ``slow``;
~20-45 s together on 2 cores with pip's cache warm). Two quick tests read ``pyproject.toml`` and ``Dockerfile.serve``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tiny_onnx import write_tiny_classifier

REPO = Path(__file__).resolve().parents[1]
#: the runtime install's budget, MiB on disk (issue 25); measured 224 (212 of file contents):
#: benchmarks/runtime_startup.json
MAX_SITE_PACKAGES_MB = 300
#: distributions of the training stack (the `train` extra) that the runtime must not pull in
TRAINING_STACK = ["tensorflow", "tensorflow-cpu", "keras", "onnx", "tf2onnx", "tensorboard", "tensorflow-datasets",
                  "scikit-learn", "scipy", "matplotlib"]
MODULES = ["tensorflow", "keras", "onnx", "tf2onnx", "tensorboard", "tensorflow_datasets", "sklearn", "scipy",
           "matplotlib"]
PIP_TIMEOUT_S = 600
START_TIMEOUT_S = 60
ATOL = 1e-5  # the installed runtime (tuned sessions) vs onnxruntime in this process (a default session)


# --- the venv and a model --------------------------------------------------------------------------------------

def _clean_env(venv: Path | None = None) -> dict:
    """This process's environment without what would leak the test's own Python into the venv's."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONUSERBASE")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", NO_COLOR="1",
               COLUMNS="200")
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
    return env


def _run(args, venv: Path, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], env=_clean_env(venv), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding ``pip install <this repository>`` (no extras, not editable)."""
    root = tmp_path_factory.mktemp("runtime_install")
    source = root / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "tltf", source / "tltf", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = root / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], env=_clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert made.returncode == 0, f"python -m venv failed:\n{made.stdout}\n{made.stderr}"
    try:
        pip = _run([venv / "bin" / "python", "-m", "pip", "install", "--no-input", source], venv,
                   timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"pip install {source} took more than {PIP_TIMEOUT_S} s:\n{e.stdout}\n{e.stderr}")
    if pip.returncode != 0:  # a registry that cannot be reached is a failure, with pip's own words
        pytest.fail(f"pip install {source} failed (exit status {pip.returncode}):\n{pip.stdout[-3000:]}\n"
                    f"{pip.stderr[-6000:]}")
    return venv


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """``tiny.onnx``: a small image classifier with tltf's contract (NHWC ``pixels`` in [0, 255], 32 px,
    ``probabilities`` of cat/dog/fish, class names and input size in the metadata), made with onnx.helper in this
    process (which has the training stack; the venv does not)."""
    return write_tiny_classifier(tmp_path_factory.mktemp("runtime_model") / "tiny.onnx")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """A PNG and a JPEG of other sizes than the model's (so that they are resized)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("runtime_images")
    rng = np.random.default_rng(3)
    png, jpg = folder / "flower.png", folder / "leaf.jpg"
    Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(png)
    Image.fromarray(rng.integers(60, 200, (20, 30, 3), dtype=np.uint8)).save(jpg, quality=90)
    return [png, jpg]


def _reference(model: Path, x: np.ndarray) -> np.ndarray:
    """``model``'s probabilities for pixels ``x`` with onnxruntime in this process."""
    import onnxruntime as ort

    return ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(
        None, {"pixels": x.astype(np.float32)})[0]


def _same_top(got: list[dict], expected: list[dict], what: str) -> None:
    assert [r["file"] for r in got] == [r["file"] for r in expected], what
    for g, e in zip(got, expected):
        assert [(t["index"], t["label"]) for t in g["top"]] == [(t["index"], t["label"]) for t in e["top"]], what
        np.testing.assert_allclose([t["score"] for t in g["top"]], [t["score"] for t in e["top"]], atol=ATOL,
                                   err_msg=what)


# --- the tests -------------------------------------------------------------------------------------------------

@pytest.mark.network
@pytest.mark.slow
def test_runtime_install_has_no_training_stack_and_fits_the_budget(venv):
    python = venv / "bin" / "python"
    listed = _run([python, "-m", "pip", "list", "--format", "json"], venv)
    assert listed.returncode == 0, listed.stderr
    names = {re.sub(r"[-_.]+", "-", p["name"]).lower() for p in json.loads(listed.stdout)}
    assert "tltf" in names
    installed = sorted(names & set(TRAINING_STACK))
    assert not installed, f"the runtime install pulled in the training stack: {installed}"
    found = _run([python, "-c", "import importlib.util, json, sys; "
                  "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))", *MODULES], venv)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout) == [], f"importable in the runtime venv: {found.stdout}"
    where = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], venv)
    site = Path(where.stdout.strip())
    assert site.is_dir() and site.is_relative_to(venv), where
    size_mb = sum(p.lstat().st_blocks * 512 for p in site.rglob("*") if not p.is_symlink()) / 2**20
    assert size_mb <= MAX_SITE_PACKAGES_MB, (
        f"the runtime install is {size_mb:.0f} MB (site-packages), over the {MAX_SITE_PACKAGES_MB} MB budget: "
        f"{sorted(names)}")
    help_ = _run([venv / "bin" / "tltf", "--help"], venv)
    assert help_.returncode == 0 and "serve" in help_.stdout, help_.stderr


@pytest.mark.network
@pytest.mark.slow
def test_runtime_predict_matches_onnxruntime(venv, model, images):
    from tltf.runtime.images import load_images

    result = _run([venv / "bin" / "tltf", "predict", model, *images, "--json", "--top", "3"], venv)
    assert result.returncode == 0, (
        f"tltf predict failed in the runtime-only install (exit status {result.returncode}):\n{result.stderr}")
    got = json.loads(result.stdout)
    probabilities = _reference(model, load_images(images, (32, 32)))
    names = ["cat", "dog", "fish"]
    expected = [{"file": str(f), "top": [{"index": int(i), "label": names[i], "score": float(p[i])}
                                         for i in np.argsort(-p, kind="stable")]}
                for f, p in zip(images, probabilities)]
    _same_top(got, expected, "tltf predict (runtime install) vs onnxruntime in-process")
    plain = _run([venv / "bin" / "tltf", "predict", model, images[0]], venv)
    assert plain.returncode == 0 and "flower.png" in plain.stdout, plain.stderr


@pytest.mark.network
@pytest.mark.slow
def test_runtime_serve_answers_v2_and_v1_and_stops_on_sigterm(venv, model, images, tmp_path):
    import requests

    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(venv / "bin" / "tltf"), "serve", str(model), "--port", "0", "--threads", "1"],
                                env=_clean_env(venv), stdout=out, stderr=subprocess.STDOUT)
    try:
        url = None
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and url is None:
            found = re.search(r"tltf serve: (http://[\d.]+:\d+)", log.read_text())
            if found:
                url = found.group(1)
            elif proc.poll() is not None:
                pytest.fail(f"tltf serve (runtime install) exited with {proc.returncode}:\n{log.read_text()}")
            else:
                time.sleep(0.05)
        assert url, f"tltf serve (runtime install) did not start in {START_TIMEOUT_S} s:\n{log.read_text()}"
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10) as ready:
            assert ready.status == 200

        x = np.random.default_rng(5).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
        body = {"inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        response = requests.post(f"{url}/v2/models/tiny/infer", json=body, timeout=60)
        assert response.status_code == 200, response.text
        (out,) = response.json()["outputs"]
        assert out["name"] == "probabilities" and out["shape"] == [3, 3]
        np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(3, 3), _reference(model, x),
                                   atol=ATOL)

        predicted = _run([venv / "bin" / "tltf", "predict", model, *images, "--json", "--top", "2"], venv)
        assert predicted.returncode == 0, predicted.stderr
        expected = [{**r, "file": Path(r["file"]).name} for r in json.loads(predicted.stdout)]
        files = [("images", (f.name, f.read_bytes(), "image/png" if f.suffix == ".png" else "image/jpeg"))
                 for f in images]
        response = requests.post(f"{url}/v1/models/tiny/predict", params={"top": 2}, files=files, timeout=60)
        assert response.status_code == 200, response.text
        _same_top(response.json(), expected, "/v1 image upload vs tltf predict --json (both the runtime install)")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    text = log.read_text()
    assert status == 0, f"tltf serve exited with {status} on SIGTERM:\n{text}"
    assert "Traceback" not in text, text


@pytest.mark.network
@pytest.mark.slow
def test_runtime_bench(venv, model, tmp_path):
    out = tmp_path / "bench.json"
    result = _run([venv / "bin" / "tltf", "bench", model, "--iterations", "3", "--batch-sizes", "1", "--json", out],
                  venv, cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, (
        "tltf bench failed in the runtime-only install (matplotlib is in the `train` extra, not the runtime: bench "
        f"must skip its PNG plot, with a one-line note, where matplotlib is missing):\n{result.stderr[-3000:]}")
    results = json.loads(out.read_text())["results"]
    assert [(r["runtime"], r["batch_size"]) for r in results] == [("onnxruntime", 1)]
    assert results[0]["p50_ms"] > 0
    assert "plot: skipped (matplotlib is not installed" in result.stdout and not out.with_suffix(".png").exists()
    asked = _run([venv / "bin" / "tltf", "bench", model, "--iterations", "1", "--plot", tmp_path / "p.png"], venv,
                 cwd=tmp_path)
    assert asked.returncode == 2 and asked.stderr.strip().splitlines() == [
        f"error: --plot {tmp_path / 'p.png'}: the plot needs matplotlib, which is not installed here "
        "(pip install matplotlib)"], asked.stderr


@pytest.mark.network
@pytest.mark.slow
def test_training_command_says_how_to_install_the_training_stack(venv):
    result = _run([venv / "bin" / "tltf", "fit", "--data", "x"], venv)
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tltf[train]" in lines[0], result.stderr
    assert lines[0].startswith("error: tltf fit needs the training stack"), lines[0]


@pytest.mark.network
@pytest.mark.slow
def test_serving_image_entrypoint_serves_every_model_of_the_folder(venv, model, tmp_path):
    """Dockerfile.serve's ENTRYPOINT and HEALTHCHECK, run here on the runtime install (its /models a temporary
    folder): no arguments serve every .onnx of the folder on 0.0.0.0:$TLTF_PORT; SIGTERM ends it with status 0."""
    text = (REPO / "Dockerfile.serve").read_text()
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(model, folder / "tiny.onnx")
    shutil.copy(model, folder / "second.onnx")
    entrypoint = [a.replace("/models", str(folder))
                  for a in json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))]
    healthcheck = json.loads(re.search(r"^\s*CMD (\[\"python\".*\])$", text, re.M).group(1))
    port = _free_port()
    env = {**_clean_env(venv), "TLTF_PORT": str(port)}
    log = tmp_path / "entrypoint.log"
    with log.open("w") as out:
        proc = subprocess.Popen(entrypoint, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while subprocess.run(healthcheck, env=env, capture_output=True).returncode != 0:
            assert proc.poll() is None, f"the entrypoint exited with {proc.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"not healthy in {START_TIMEOUT_S} s:\n{log.read_text()}"
            time.sleep(0.2)
        assert f"http://0.0.0.0:{port}" in log.read_text()
        assert re.search(r"models: (second|tiny) \(v2, v1 images\), (second|tiny) ", log.read_text()), log.read_text()
        assert Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[1].endswith(b"/tltf"), "tltf is not exec'd"
    finally:
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=30)
    assert status == 0, log.read_text()


def _free_port() -> int:
    """A TCP port free now (the entrypoint's server binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_packaging_keeps_the_training_stack_in_extras():
    """The base dependencies are the runtime's; `train` holds the training stack; `dev` and `gpu` build on it."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert names == {"onnxruntime", "numpy", "pillow", "click", "rich", "starlette", "uvicorn", "python-multipart",
                     "prometheus-client"}, names
    extras = project["optional-dependencies"]
    train = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower() for d in extras["train"]}
    assert {"tensorflow", "keras", "tensorflow-datasets", "onnx", "tf2onnx", "matplotlib", "scikit-learn"} <= train
    assert "tltf[train]" in extras["dev"] and "tltf[train]" in extras["gpu"]


def test_serving_image_is_the_runtime_alone():
    text = (REPO / "Dockerfile.serve").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    installs = re.findall(r"pip install[^\n]*", text)
    assert installs and all("[" not in line for line in installs), installs  # no extras
    assert re.search(r"^USER tltf$", text, re.M) and re.search(r"^EXPOSE 8000$", text, re.M)
    assert "/v2/health/ready" in re.search(r"^HEALTHCHECK[^\n]*\n[^\n]*", text, re.M).group(0)
    assert "exec tltf serve --host 0.0.0.0" in text
