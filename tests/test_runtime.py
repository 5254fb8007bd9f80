"""The TensorFlow-free runtime: what runs without the training stack, and that it gives what the TF path gives.

- every runtime module imports, and ``tltf --help`` / ``tltf CMD --help`` answer, in a process where TensorFlow,
  Keras, tf2onnx and onnx cannot be imported (``blocked_tf.blocked_tf_env``);
- ``predict`` (files and a class-folder tree), ``bench``, and ``serve`` (v2 infer and v1 image upload) run in such a
  process and answer exactly what the full install answers;
- Pillow decoding and resizing (:mod:`tltf.runtime.images`) against TensorFlow's (:mod:`tltf.data.images`) on
  image files the test writes (PNG, JPEG, grey, RGBA, palette, GIF, BMP) and, marked ``network``, on the 20 real
  ImageNet photos of the foolbox wheel, with an imported ImageNet MobileNetV2 agreeing on top-1.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from blocked_tf import BLOCKED, blocked_tf_env
from conftest import cli

REPO = Path(__file__).resolve().parent.parent
#: |Pillow - TensorFlow| on the same decoded pixels (measured: at most 0.0056 of 255 on the foolbox photos at
#: 224x224, 96x96 and 500x300), and the JPEG decoders agree exactly since the pipeline asks for the accurate DCT
RESIZE_ATOL = 0.01


def run_blocked(tmp_path: Path, *args, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=_env(tmp_path), cwd=tmp_path)


def _env(tmp_path: Path) -> dict:
    """Without the training stack, importing this checkout's tltf whatever the working folder."""
    env = blocked_tf_env(tmp_path / "blocked")
    env["PYTHONPATH"] += os.pathsep + str(REPO)
    return env


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A cnn_small classifier (48 px, 3 classes) exported by tltf, and real image files of several formats."""
    import keras
    from PIL import Image

    from tltf.export.onnx import export_onnx
    from tltf.models.classifier import build_classifier

    folder = tmp_path_factory.mktemp("runtime")
    keras.utils.set_random_seed(1)
    model = build_classifier("cnn_small", ["cat", "dog", "fish"], image_size=48, weights="none")
    model.save(folder / "small.keras")
    export_onnx(folder / "small.keras", folder / "small.onnx")
    images = folder / "images"
    images.mkdir()
    for i, (name, fmt) in enumerate([("photo.jpg", "JPEG"), ("photo.png", "PNG"), ("grey.png", "PNG"),
                                     ("alpha.png", "PNG"), ("palette.gif", "GIF"), ("bitmap.bmp", "BMP")]):
        Image.fromarray(_picture(90 + 13 * i, 70 + 9 * i, seed=i)).save(images / name, fmt)
    _convert(images / "grey.png", "L")
    _convert(images / "alpha.png", "RGBA")
    _convert(images / "palette.gif", "P")
    return {"keras": folder / "small.keras", "onnx": folder / "small.onnx", "images": images, "folder": folder}


def _picture(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth colour picture with edges and noise: resizing it exercises the filter, not just flat colour."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([128 + 100 * np.sin(6 * x + seed), 128 + 100 * np.cos(5 * y), 255 * (x > y)], -1)
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _convert(path: Path, mode: str) -> None:
    from PIL import Image

    with Image.open(path) as im:
        converted = im.convert(mode)
    if mode == "RGBA":  # a real alpha channel, which both decoders drop
        alpha = np.asarray(converted).copy()
        alpha[..., 3] = np.linspace(0, 255, alpha.shape[1], dtype=np.uint8)[None, :]
        converted = Image.fromarray(alpha, "RGBA")
    converted.save(path)


# --- nothing of the training stack ---------------------------------------------------------------------------

RUNTIME_MODULES = ["tltf", "tltf.runtime", "tltf.runtime.onnx_model", "tltf.runtime.images", "tltf.runtime.outputs",
                   "tltf.predict", "tltf.extras", "tltf.data", "tltf.data.folders", "tltf.serve", "tltf.serve.app",
                   "tltf.serve.models", "tltf.serve.images", "tltf.bench.runner", "tltf.bench.report", "tltf.cli"]


def test_runtime_modules_and_every_help_import_no_training_stack(tmp_path):
    code = ("import importlib, sys\n"
            f"for name in {RUNTIME_MODULES!r}:\n"
            "    importlib.import_module(name)\n"
            f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {set(BLOCKED)!r})\n"
            "print(loaded)\n")
    proc = run_blocked(tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
    from tltf.cli import COMMANDS

    for args in (["--help"], *([name, "--help"] for name in COMMANDS)):
        proc = run_blocked(tmp_path, "-m", "tltf", *args)
        assert proc.returncode == 0 and "Usage:" in proc.stdout, (args, proc.stderr[-2000:])


def test_keras_side_says_how_to_install_it_in_one_line(exported, tmp_path):
    """A .keras model, training and export without the training stack: one line naming tltf[train], status 2."""
    for args in (["predict", exported["keras"], exported["images"] / "photo.png"],
                 ["fit", "--data", "builtin:shapes", "--epochs", "1"],
                 ["export", exported["keras"], "--onnx"],
                 ["bench", exported["onnx"], "--keras", exported["keras"], "--iterations", "1"]):
        proc = run_blocked(tmp_path, "-m", "tltf", *args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "pip install 'tltf[train]'" in lines[0], (
            args, proc.stderr)


def test_predict_and_bench_without_the_training_stack_answer_as_the_full_install(exported, tmp_path):
    files = sorted(str(p) for p in exported["images"].iterdir())
    proc = run_blocked(tmp_path, "-m", "tltf", "predict", exported["onnx"], *files, "--top", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    full = cli("predict", exported["onnx"], *files, "--top", "3", "--json")
    assert full.exit_code == 0, full.stderr
    assert json.loads(proc.stdout) == json.loads(full.stdout)
    keras_side = json.loads(cli("predict", exported["keras"], *files, "--top", "3", "--json").stdout)
    for onnx_row, keras_row in zip(json.loads(proc.stdout), keras_side):
        assert [t["index"] for t in onnx_row["top"]] == [t["index"] for t in keras_row["top"]]
        assert np.allclose([t["score"] for t in onnx_row["top"]], [t["score"] for t in keras_row["top"]], atol=1e-5)

    tree = tmp_path / "tree"  # a class-folder tree with train/ and val/ splits, read without TensorFlow
    for split, cls in (("train", "a"), ("train", "b"), ("val", "a"), ("val", "b")):
        (tree / split / cls).mkdir(parents=True)
    for i, f in enumerate(files[:4]):
        target = tree / ("train", "val")[i // 2] / ("a", "b")[i % 2] / Path(f).name
        target.write_bytes(Path(f).read_bytes())
    proc = run_blocked(tmp_path, "-m", "tltf", "predict", exported["onnx"], tree, "--json", "--top", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [Path(r["file"]).relative_to(tree).parts[:2] for r in json.loads(proc.stdout)] == [
        ("train", "a"), ("train", "b"), ("val", "a"), ("val", "b")]

    out = tmp_path / "bench.json"
    proc = run_blocked(tmp_path, "-m", "tltf", "bench", exported["onnx"], "--batch-sizes", "1,4", "--iterations",
                       "3", "--warmup", "1", "--json", out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bench = json.loads(out.read_text())
    assert [(r["runtime"], r["batch_size"]) for r in bench["results"]] == [("onnxruntime", 1), ("onnxruntime", 4)]
    assert all(r["p50_ms"] > 0 and r["iterations"] == 3 for r in bench["results"])
    assert "tensorflow" not in bench["environment"]


def test_serve_without_the_training_stack_answers_v2_and_v1(exported, tmp_path):
    import onnxruntime as ort

    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "tltf", "serve", exported["onnx"], "--port", "0",
                                 "--threads", "1"], stdout=sink, stderr=subprocess.STDOUT,
                                env=_env(tmp_path), cwd=tmp_path)
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            found = re.search(r"tltf serve: (http://[\d.]+:\d+)", log.read_text())
            url = found.group(1) if found else None
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        assert url, log.read_text()
        assert urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10).status == 200
        pixels = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 3)).astype(np.float32)
        body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 48, 48, 3],
                                       "data": pixels.ravel().tolist()}]}).encode()
        request = urllib.request.Request(f"{url}/v2/models/small/infer", body, {"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
        got = np.asarray(answer["outputs"][0]["data"], np.float32).reshape(answer["outputs"][0]["shape"])
        session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
        assert np.allclose(got, session.run(None, {"pixels": pixels})[0], atol=2e-6)

        import requests

        photo = exported["images"] / "photo.jpg"
        with photo.open("rb") as f:
            v1 = requests.post(f"{url}/v1/models/small/predict?top=3", files={"file": ("photo.jpg", f)}, timeout=30)
        assert v1.status_code == 200, v1.text
        local = json.loads(cli("predict", exported["onnx"], photo, "--top", "3", "--json").stdout)
        assert v1.json()[0]["top"] == local[0]["top"]
        bad = requests.post(f"{url}/v1/models/small/predict", files={"file": ("x.png", b"not an image")}, timeout=30)
        assert bad.status_code == 400 and bad.json() == {"error": "x.png: not a readable image "
                                                                  "(UnidentifiedImageError)"}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


# --- the same pixels as the TensorFlow pipeline ----------------------------------------------------------------

def _tf_pixels(path, size, accurate: bool = True) -> np.ndarray:
    """TensorFlow's pixels: the pipeline's decoder (``accurate``), or ``tf.io.decode_image``'s default (the fast
    DCT, what tltf decoded with before the runtime existed)."""
    import tensorflow as tf

    from tltf.data.images import decode, resize

    data = tf.io.read_file(str(path))
    image = decode(data) if accurate else tf.io.decode_image(data, channels=3, expand_animations=False)
    return resize(image, size).numpy()


def test_pillow_pixels_equal_the_training_pipelines_on_every_format(exported):
    from tltf.runtime.images import load_image

    for path in sorted(exported["images"].iterdir()):
        for size in ((48, 48), (224, 224), (31, 77)):
            ours, theirs = load_image(path, size), _tf_pixels(path, size)
            assert ours.shape == theirs.shape == (*size, 3) and ours.dtype == np.float32
            assert np.abs(ours - theirs).max() <= RESIZE_ATOL, (path.name, size, np.abs(ours - theirs).max())


def test_bad_images_are_one_line_errors_naming_the_file(tmp_path):
    from PIL import Image

    from tltf.errors import TltfError
    from tltf.runtime.images import MAX_IMAGE_PIXELS, load_image

    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(_picture(40, 40, 0)).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    Image.new("L", (8000, 7000)).save(tmp_path / "huge.png")  # 56 MP, a few KB on disk
    cases = {"garbage.jpg": "not a readable image", "truncated.png": "not a readable image",
             "huge.png": f"larger than the {MAX_IMAGE_PIXELS:,} pixels", "missing.png": "no such file"}
    for name, said in cases.items():
        with pytest.raises(TltfError) as e:
            load_image(tmp_path / name, (32, 32))
        assert str(e.value).startswith(f"{tmp_path / name}: ") and said in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TltfError, match=r"^upload\.png: not a readable image"):
        load_image(data[:100], (32, 32), name="upload.png")


@pytest.mark.network
@pytest.mark.slow
def test_real_photos_pixels_and_top1_match_the_tensorflow_path(torchvision_weights, tmp_path):
    """The 20 ImageNet photos: Pillow = the pipeline's TensorFlow pixels within :data:`RESIZE_ATOL`; the imported
    ImageNet MobileNetV2, exported, gives the same top-1 on every photo whether its pixels come from Pillow
    (``tltf predict X.onnx``, no TensorFlow) or from TensorFlow as tltf decoded them before (fast DCT)."""
    from tltf.data import offline
    from tltf.export.onnx import export_onnx
    from tltf.predict import predict_files
    from tltf.runtime.images import load_images

    photos = offline.imagenet_photos()
    files = [p for p, _ in photos]
    ours = load_images(files, (224, 224))
    pipeline = np.stack([_tf_pixels(p, (224, 224)) for p in files])
    before = np.stack([_tf_pixels(p, (224, 224), accurate=False) for p in files])
    assert np.abs(ours - pipeline).max() <= RESIZE_ATOL
    assert 0.5 < np.abs(ours - before).max() < 8  # the fast DCT's differences, averaged by the resize

    onnx_file = tmp_path / "mobilenet_v2.onnx"
    export_onnx(torchvision_weights, onnx_file)
    runtime = predict_files(onnx_file, files, top=1)
    import keras

    from tltf.runtime.outputs import class_probabilities

    model = keras.models.load_model(torchvision_weights, compile=False)
    old = class_probabilities(model.predict(before, verbose=0))
    assert [r["top"][0]["index"] for r in runtime] == old.argmax(axis=1).tolist()
    assert sum(r["top"][0]["index"] == label for r, (_, label) in zip(runtime, photos)) >= 17
    scores = np.array([r["top"][0]["score"] for r in runtime])
    assert np.abs(scores - old.max(axis=1)).max() < 0.05


def test_bad_onnx_files_are_one_line_errors_without_the_training_stack(exported, tmp_path):
    """Empty, garbage, truncated files and lying metadata, refused by onnxruntime and the contract alone."""
    import onnx

    data = exported["onnx"].read_bytes()
    bad = {"empty": (b"", "not an ONNX model (empty file)"),
           "garbage": (bytes(range(256)) * 8, "onnxruntime cannot load it"),
           "truncated": (data[: len(data) // 2], "onnxruntime cannot load it")}
    for name, (content, _) in bad.items():
        (tmp_path / f"{name}.onnx").write_bytes(content)
    for key, value in (("image_size", "[100000, 100000]"), ("class_names", "[1, 2]"), ("tasks", "{oops")):
        proto = onnx.load(str(exported["onnx"]))
        entry = next((p for p in proto.metadata_props if p.key == key), None) or proto.metadata_props.add(key=key)
        entry.value = value
        onnx.save(proto, str(tmp_path / f"{key}.onnx"))
        bad[key] = (None, {"image_size": "larger than the 4096x4096", "class_names": "class_names is not a JSON list",
                           "tasks": "tasks is not a JSON list"}[key])
    image = exported["images"] / "photo.png"
    for name, (_, said) in bad.items():
        for args in (["predict", tmp_path / f"{name}.onnx", image],
                     ["bench", tmp_path / f"{name}.onnx", "--batch-sizes", "1", "--iterations", "1"]):
            proc = run_blocked(tmp_path, "-m", "tltf", *args)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr[-2000:])
            assert lines[0].startswith(f"error: {tmp_path / name}.onnx: ") and said in lines[0], lines[0]


def test_import_tltf_is_light_and_load_model_registers_what_it_needs(exported, tmp_path):
    """``import tltf`` loads no TensorFlow; ``tltf.load_model`` (and plain Keras after ``import tltf.keras_objects``)
    loads a saved tltf model in a fresh process, its custom layers registered."""
    code = ("import sys, numpy as np, tltf\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
            f"model = tltf.load_model({str(exported['keras'])!r})\n"
            "print(model.predict(np.full((1, 48, 48, 3), 99.0, 'float32'), verbose=0).round(6).tolist())\n")
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    code = ("import keras, numpy as np, tltf.keras_objects\n"
            f"model = keras.models.load_model({str(exported['keras'])!r})\n"
            "print(model.predict(np.full((1, 48, 48, 3), 99.0, 'float32'), verbose=0).round(6).tolist())\n")
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    probs = json.loads(first.stdout.strip().splitlines()[-1])
    assert probs == json.loads(second.stdout.strip().splitlines()[-1]) and abs(sum(probs[0]) - 1) < 1e-5
