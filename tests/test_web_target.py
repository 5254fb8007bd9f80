"""The web target (issue 26): ``build_web_app`` writes a static page that classifies images with onnxruntime-web
(wasm) in a real browser -- Debian's Chromium (``/usr/bin/chromium``), driven by Playwright -- and the page agrees
with onnxruntime in Python on the same files: top-1 equal on every image, every score within 1e-3.

The tests that build a page fetch onnxruntime-web with ``npm pack`` (the npm registry) and are marked network; the
error paths (no npm, an unreachable registry, a folder that is not ours) and the JavaScript resize (run by node)
need no registry.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tltf.errors import TltfError
from tltf.export.web import ORT_WEB_FILES, ORT_WEB_VERSION, build_web_app, serve_folder
from tltf.runtime.images import load_image, load_images
from tltf.runtime.onnx_model import OnnxModel

CHROMIUM = "/usr/bin/chromium"
#: the page's scores against onnxruntime in Python (issue 26)
SCORE_ATOL = 1e-3
PAGE = Path(__file__).resolve().parents[1] / "tltf" / "export" / "web_page"


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium under Playwright (never ``playwright install``: the browser is Debian's)."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: .ci/run installs Debian's chromium"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


class Page:
    """A page of the built folder, open in Chromium, with every request and page error it made recorded."""

    def __init__(self, browser, url: str):
        self.url = url
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page()
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)
        self.info = self.page.evaluate("window.tltfReady")

    def classify(self, name: str) -> dict:
        return self.page.evaluate("(name) => window.tltfClassify(name)", name)

    def pixels(self, name: str, size) -> np.ndarray:
        flat = self.page.evaluate("(name) => window.tltfPixels(name)", name)
        return np.asarray(flat, np.float32).reshape(size[0], size[1], 3)

    def only_local(self) -> list[str]:
        """The requests that went anywhere but this folder's server (a CDN, ...): none expected."""
        return [u for u in self.requests if not u.startswith((self.url, "data:", "blob:"))]


def _python_side(onnx_file: Path, files: list[Path]):
    model = OnnxModel(onnx_file, threads=1)
    return model, model.predict(load_images(files, model.image_size))


def _compare(page: Page, model: OnnxModel, expected: np.ndarray, files: list[Path]) -> list[dict]:
    """Each file classified in the page: its pixels equal Pillow's, its top-1 and scores onnxruntime's (each task's
    of a multitask file)."""
    segments = model.segments or [(None, 0, expected.shape[1], model.class_names)]
    results = []
    for file, want in zip(files, expected):
        name = f"images/{file.name}"
        pixels = page.pixels(name, model.image_size)
        assert np.abs(pixels - load_image(file, model.image_size)).max() <= 1e-3, file.name
        got = page.classify(name)
        assert [o["name"] for o in got["outputs"]] == (
            [task for task, *_ in segments] if model.segments else [model.output_name])
        probs = np.concatenate([o["probabilities"] for o in got["outputs"]])
        assert probs.shape == want.shape, file.name
        assert np.abs(probs - want).max() <= SCORE_ATOL, (file.name, np.abs(probs - want).max())
        for output, (_, start, stop, names) in zip(got["outputs"], segments):
            part = want[start:stop]
            top = [t["index"] for t in output["top"]]
            assert top[0] == int(part.argmax()), file.name
            assert top == sorted(top, key=lambda i: -part[i])  # the page's top-k is in decreasing score
            if names:
                assert [t["label"] for t in output["top"]] == [names[i] for i in top]
        assert got["ms"]["inference"] > 0 and got["ms"]["total"] >= got["ms"]["inference"]
        results.append(got)
    return results


def _copy_images(files, folder: Path) -> None:
    (folder / "images").mkdir()
    for file in files:
        shutil.copyfile(file, folder / "images" / file.name)


@pytest.mark.network
@pytest.mark.slow
def test_imagenet_mobilenet_page_in_chromium_agrees_with_onnxruntime(torchvision_weights, browser, tmp_path):
    """MobileNetV2 with torchvision's ImageNet weights, exported, built as a page and opened in Chromium: on the 20
    ImageNet photos of the foolbox wheel the page's input pixels equal Pillow's, its top-1 equals onnxruntime's in
    Python on every photo and every one of the 1000 scores is within 1e-3 (measured: 20/20, max |diff| 1.6e-6),
    and it is right on at least 17 photos. Images chosen with the page's file input are shown with their top
    classes and the page's ms/image; nothing is requested outside the folder."""
    from tltf.data import offline
    from tltf.export.onnx import export_onnx

    photos = offline.imagenet_photos()
    files = [path for path, _ in photos]
    onnx_file = tmp_path / "mobilenet_v2.onnx"
    export_onnx(torchvision_weights, onnx_file)
    folder = tmp_path / "mobilenet_v2.web"
    report = build_web_app(onnx_file, folder)
    assert report["onnxruntime_web"]["version"] == ORT_WEB_VERSION and report["classes"] == 1000
    assert set(report["files"]) == {"index.html", "app.js", "preprocess.js", "model.onnx", "model.json",
                                    "labels.json", *(f"ort/{name}" for name in ORT_WEB_FILES)}
    _copy_images(files, folder)
    model, expected = _python_side(onnx_file, files)
    assert sum(int(row.argmax()) == label for row, (_, label) in zip(expected, photos)) >= 17

    with serve_folder(folder) as url:
        page = Page(browser, url)
        assert page.info["ortVersion"] == ORT_WEB_VERSION and page.info["imageSize"] == [224, 224]
        results = _compare(page, model, expected, files)
        assert sum(r["top"][0]["index"] == label for r, (_, label) in zip(results, photos)) >= 17

        # a person choosing two photos: each shown with its top class; the page shows its ms/image
        page.page.set_input_files("#files", [str(f) for f in files[:2]])
        page.page.wait_for_function("document.querySelectorAll('.result').length === 2", timeout=60_000)
        shown = page.page.inner_text("#results")
        for row in expected[:2]:
            assert model.class_names[int(row.argmax())] in shown
        assert re.search(r"\d+\.\d ms/image in the model", page.page.inner_text("#speed"))
        assert page.only_local() == [] and page.errors == []


def _write_binary_classifier(path: Path) -> Path:
    """A tltf-contract classifier with a binary head: one sigmoid output (the page shows it as two classes)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = {"scale": np.array(1 / 255, np.float32), "w": np.array([[3.0], [-2.0], [1.0]], np.float32),
               "b": np.array([-1.0], np.float32)}
    nodes = [helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
             helper.make_node("ReduceMean", ["scaled"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("Gemm", ["mean", "w", "b"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probabilities"])]
    graph = helper.make_graph(nodes, "binary", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                              ["batch", 24, 40, 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 1])],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    helper.set_model_props(proto, {"class_names": json.dumps(["no", "yes"]), "image_size": "[24, 40]",
                                   "output_name": "probabilities"})
    onnx.save(proto, str(path))
    return path


def _write_two_task_classifier(path: Path) -> Path:
    """A multitask file as tltf exports one: an output per task, named after it, and metadata ``tasks``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # colour: about the dominant channel (no ties on grey); bright: the mean pixel above or below 128
    weights = {"scale": np.array(1 / 32, np.float32),
               "w1": np.array([[1, 0, 0.2], [0, 1, 0], [0.1, 0, 1]], np.float32),
               "w2": np.array([[-1, 1]] * 3, np.float32), "b2": np.array([12, -12], np.float32)}
    nodes = [helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
             helper.make_node("ReduceMean", ["scaled"], ["mean"], axes=[1, 2], keepdims=0),
             helper.make_node("MatMul", ["mean", "w1"], ["l1"]), helper.make_node("Softmax", ["l1"], ["colour"]),
             helper.make_node("Gemm", ["mean", "w2", "b2"], ["l2"]), helper.make_node("Softmax", ["l2"], ["bright"])]
    graph = helper.make_graph(nodes, "two_tasks", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                                 ["batch", 20, 20, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", k])
                               for n, k in (("colour", 3), ("bright", 2))],
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    tasks = [["colour", ["red", "green", "blue"]], ["bright", ["dark", "light"]]]
    helper.set_model_props(proto, {"class_names": json.dumps(tasks[0][1]), "image_size": "[20, 20]",
                                   "tasks": json.dumps(tasks), "output_name": "colour"})
    onnx.save(proto, str(path))
    return path


def _test_images(folder: Path) -> list[Path]:
    """Images of every kind the page decodes: RGB, grey, palette; PNG, JPEG, BMP, GIF; shrunk and enlarged."""
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir()
    y, x = np.mgrid[0:90, 0:130]
    halves = np.stack([(x < 65) * 255, (x // 3 % 2) * 200, y * 255 // 90], axis=-1).astype(np.uint8)
    green = np.stack([x * 0, 120 + y, x], axis=-1).astype(np.uint8)
    noisy = rng.integers(0, 256, (37, 23, 3), dtype=np.uint8)
    images = {
        "halves.png": Image.fromarray(halves),
        "green.jpg": Image.fromarray(green),
        "noisy.bmp": Image.fromarray(noisy),  # enlarged to the model's size
        "grey.png": Image.fromarray(halves[..., 1]).convert("L"),
        "palette.png": Image.fromarray(halves).convert("P", palette=Image.Palette.ADAPTIVE, colors=16),
        "first_frame.gif": Image.fromarray(green[::2, ::3]).convert("P"),
        "wide.jpg": Image.fromarray(np.repeat(halves[..., ::-1], 4, axis=1)),
    }
    paths = []
    for name, image in images.items():
        image.save(folder / name, **({"quality": 92} if name.endswith(".jpg") else {}))
        paths.append(folder / name)
    return paths


@pytest.mark.network
def test_small_models_agree_on_every_image_format_and_a_binary_head(browser, tmp_path):
    """Three small models with tltf's contract -- a 3-class softmax at 32x32, a binary sigmoid at 24x40 (shown
    as two columns, as tltf.runtime.outputs does) and a two-task file at 20x20 (top classes per task) -- on PNG (RGB, grey, palette), JPEG, BMP and GIF images,
    shrunk and enlarged: pixels equal to Pillow's, top-1 equal and scores within 1e-3 of onnxruntime in Python.
    A file that is not an image is one error line in the page, and a rebuild replaces the folder whole."""
    from tiny_onnx import write_tiny_classifier

    files = _test_images(tmp_path / "source")
    models = (write_tiny_classifier(tmp_path / "tiny.onnx"), _write_binary_classifier(tmp_path / "bin.onnx"),
              _write_two_task_classifier(tmp_path / "two_tasks.onnx"))
    for onnx_file in models:
        folder = tmp_path / f"{onnx_file.stem}.web"
        build_web_app(onnx_file, folder, top_k=2)
        build_web_app(onnx_file, folder, top_k=2)  # over the first build
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
        _copy_images(files, folder)
        (folder / "images" / "notes.png").write_text("not an image")
        model, expected = _python_side(onnx_file, files)
        assert np.ptp(expected[:, 0]) > 0.3  # the images give the model different answers
        with serve_folder(folder) as url:
            page = Page(browser, url)
            results = _compare(page, model, expected, files)
            assert all(len(o["top"]) == 2 for r in results for o in r["outputs"])
            with pytest.raises(Exception, match="not a readable image"):
                page.classify("images/notes.png")
            page.page.set_input_files("#files", str(folder / "images" / "notes.png"))
            page.page.wait_for_selector(".result .error")
            assert "notes.png: not classified" in page.page.inner_text("#results")
            assert page.only_local() == []


@pytest.mark.network
def test_opened_as_a_file_the_page_says_to_serve_it_over_http(browser, tmp_path):
    from tiny_onnx import write_tiny_classifier

    folder = tmp_path / "tiny.web"
    build_web_app(write_tiny_classifier(tmp_path / "tiny.onnx"), folder)
    page = browser.new_page()
    page.goto((folder / "index.html").as_uri())
    page.wait_for_selector("#status.error")
    assert "python -m http.server" in page.inner_text("#status")


# --- without the registry --------------------------------------------------------------------------------------

def test_the_javascript_resize_is_pillows(tmp_path):
    """preprocess.js (run by node) against tltf.runtime.images.resize (Pillow, float32 BILINEAR): bit-identical
    shrinking and enlarging, within 1e-4 of 255 on every case (one mixed up/down case differs by 1.5e-5)."""
    from tltf.runtime.images import resize

    node = shutil.which("node")
    assert node, "node missing (the web target needs node and npm)"
    rng = np.random.default_rng(1)
    cases = [(375, 500, 224, 224), (100, 80, 224, 224), (224, 224, 224, 224), (50, 300, 96, 64),
             (7, 9, 5, 13), (683, 1024, 224, 224), (1000, 33, 17, 33)]
    exact = 0
    for h, w, oh, ow in cases:
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        rgba = np.concatenate([image, np.full((h, w, 1), 255, np.uint8)], axis=2)
        (tmp_path / "in.bin").write_bytes(rgba.tobytes())
        script = (f"const p = require({json.dumps(str(PAGE / 'preprocess.js'))}); const fs = require('fs');"
                  f"const b = fs.readFileSync({json.dumps(str(tmp_path / 'in.bin'))});"
                  f"const o = p.resizeRGBA(new Uint8Array(b.buffer, b.byteOffset, b.length), {w}, {h}, {oh}, {ow});"
                  f"fs.writeFileSync({json.dumps(str(tmp_path / 'out.bin'))}, Buffer.from(o.buffer));")
        subprocess.run([node, "-e", script], check=True, timeout=60)
        got = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.float32).reshape(oh, ow, 3)
        want = resize(image, (oh, ow))
        assert np.abs(got - want).max() <= 1e-4, (h, w, oh, ow)
        exact += np.array_equal(got, want)
    assert exact >= len(cases) - 1


def test_no_npm_and_an_unreachable_registry_are_one_line_errors_that_write_nothing(tmp_path, monkeypatch):
    from tiny_onnx import write_tiny_classifier

    onnx_file = write_tiny_classifier(tmp_path / "tiny.onnx")
    monkeypatch.setenv("TLTF_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out" / "tiny.web"

    empty = tmp_path / "bin"
    empty.mkdir()
    with monkeypatch.context() as m:
        m.setenv("PATH", str(empty))
        with pytest.raises(TltfError, match=r"^--target web: npm not found on the PATH") as e:
            build_web_app(onnx_file, out)
    assert "\n" not in str(e.value) and not out.exists()

    # nothing listens on port 9: the registry cannot be reached (npm's own cache is an empty folder)
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    with pytest.raises(TltfError, match=r"^--target web: the npm registry is unreachable: cannot fetch "
                                        rf"onnxruntime-web@{re.escape(ORT_WEB_VERSION)}") as e:
        build_web_app(onnx_file, out)
    assert "\n" not in str(e.value) and len(str(e.value)) < 500
    assert not out.exists() and not (tmp_path / "cache" / "npm" / f"onnxruntime-web-{ORT_WEB_VERSION}").exists()
    assert [p.name for p in (tmp_path / "cache" / "npm").iterdir()] == []  # no half-fetched package left


def test_bad_models_and_a_folder_that_is_not_ours_are_refused(tmp_path):
    from tiny_onnx import write_tiny_classifier

    onnx_file = write_tiny_classifier(tmp_path / "tiny.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(TltfError, match=rf"^{re.escape(str(garbage))}: onnxruntime cannot load it"):
        build_web_app(garbage, tmp_path / "garbage.web")
    with pytest.raises(TltfError, match="no such model file"):
        build_web_app(tmp_path / "missing.onnx", tmp_path / "missing.web")

    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "keep.jpg").write_bytes(b"precious")
    with pytest.raises(TltfError, match=r"photos: exists and is not a folder tltf's web target wrote"):
        build_web_app(onnx_file, mine)
    assert [p.name for p in mine.iterdir()] == ["keep.jpg"]
    with pytest.raises(TltfError, match=r"keep.jpg: exists and is a file"):
        build_web_app(onnx_file, mine / "keep.jpg")
    with pytest.raises(TltfError, match=r"^--top-k 0"):
        build_web_app(onnx_file, tmp_path / "tiny.web", top_k=0)
    assert not (tmp_path / "garbage.web").exists() and not (tmp_path / "tiny.web").exists()
    assert os.listdir(mine) == ["keep.jpg"]


def test_a_killed_builds_leftovers_are_cleaned_and_an_earlier_build_restored(tmp_path):
    """What ``kill -9`` in the middle of a build leaves beside the folder (a staging folder; the earlier build
    renamed aside) is handled by the next build: the staging folder removed, the earlier build put back."""
    from tltf.export.web import _clean_stale

    out = tmp_path / "flowers.web"
    dead = 99_999_999  # above any pid_max: no such process
    staging = tmp_path / f".flowers.web.tltf-web-{dead}-x1y2"
    earlier = tmp_path / f".flowers.web.tltf-web-old-{dead}"
    alive = tmp_path / f".flowers.web.tltf-web-{os.getpid()}-z3"
    other = tmp_path / f".tulips.web.tltf-web-{dead}-q"
    for folder in (staging, earlier, alive, other):
        folder.mkdir()
    (earlier / "model.json").write_text("{}")
    _clean_stale(out)
    assert not staging.exists() and alive.exists() and other.exists()
    assert (out / "model.json").is_file() and not earlier.exists()
