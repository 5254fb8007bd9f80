"""tltf.models.transfer.copy_backbone_from: `--weights FILE.keras` copies a backbone by layer name, with its BN
epsilons and its input normalisation; a file that does not match is refused in one line, the target untouched."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tltf import backbones
from tltf.errors import TltfError
from tltf.models.classifier import backbone_of, build_classifier
from tltf.models.transfer import build_backbone, copy_backbone_from

SIZE = 32


def _randomise(net: keras.Model, seed: int, epsilon: float | None = None) -> None:
    """Realistic, distinct BatchNorm parameters and statistics (small variances, so epsilon matters); the kernels
    keep their random initialisation (different from any other build's). Optionally set BN epsilons."""
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.01, n),
                               rng.uniform(1e-4, 1e-3, n)])
            if epsilon is not None:
                layer.epsilon = epsilon


@pytest.fixture
def torch_source(tmp_path):
    """A saved classifier like `tltf weights import` writes: torch normalisation, BN epsilon 1e-5, 224 px."""
    model = build_classifier("mobilenet_v2", ["a", "b", "c"], 64, weights="none", preprocess="torch")
    _randomise(backbone_of(model), seed=1, epsilon=1e-5)
    path = tmp_path / "source.keras"
    model.save(path)
    return path, model


def _weights(net):
    return {layer.name: [w.copy() for w in layer.get_weights()] for layer in net.layers if layer.weights}


def test_copies_weights_epsilons_and_preprocessing(torch_source):
    path, source = torch_source
    net = backbones.get("mobilenet_v2").build(SIZE, weights="none")  # other input size than the source
    assert {layer.epsilon for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)} == {1e-3}
    copy_backbone_from(net, path)
    want = _weights(backbone_of(source))
    got = _weights(net)
    assert list(got) == list(want) and len(got) == 104
    for name in want:
        for a, b in zip(got[name], want[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert {layer.epsilon for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)} == {1e-5}
    assert net._tltf_preprocess == "torch"
    assert dict(net._tltf_preprocess_kwargs) == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def test_build_classifier_with_keras_weights_survives_save_and_load(torch_source, tmp_path):
    path, source = torch_source
    model = build_classifier("mobilenet_v2", ["x", "y"], SIZE, weights=str(path))  # via load_backbone_weights
    pre = model.get_layer("preprocess")
    assert pre.mode == "torch" and pre.std == (0.229, 0.224, 0.225)
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    before = model.predict(x, verbose=0)
    model.save(tmp_path / "run.keras")
    loaded = keras.models.load_model(tmp_path / "run.keras")
    bns = [layer for layer in backbone_of(loaded).layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(bns) == 52 and {layer.epsilon for layer in bns} == {1e-5}
    assert loaded.get_layer("preprocess").mode == "torch"
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, atol=1e-6)
    # the copied backbone computes the source's features (same weights, epsilons; any input size)
    net = build_backbone(backbones.get("mobilenet_v2"), 64, weights=str(path))
    x64 = source.get_layer("preprocess")(np.random.default_rng(1).uniform(0, 255, (1, 64, 64, 3))).numpy()
    want = backbone_of(source).predict(x64, verbose=0)
    assert want.std() > 0.1
    np.testing.assert_allclose(net.predict(x64, verbose=0), want, rtol=1e-5, atol=1e-5)


def test_epsilon_is_not_cosmetic(torch_source):
    """With the copied 1e-5 the features differ from the same weights under Keras' 1e-3 (so it must be copied)."""
    path, _ = torch_source
    net = backbones.get("mobilenet_v2").build(SIZE, weights="none")
    copy_backbone_from(net, path)
    x = np.random.default_rng(2).normal(0, 1, (1, SIZE, SIZE, 3)).astype(np.float32)
    with_copy = net.predict(x, verbose=0)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.epsilon = 1e-3
    rebuilt = keras.Model(net.input, net.output)  # a fresh trace with the changed epsilons
    assert np.abs(rebuilt.predict(x, verbose=0) - with_copy).max() > 1e-3


def test_tf_mode_source_records_tf(tmp_path):
    model = build_classifier("mobilenet_v2", ["a", "b"], SIZE, weights="none")  # registry default: tf
    model.save(tmp_path / "tf.keras")
    net = backbones.get("mobilenet_v2").build(SIZE, weights="none")
    copy_backbone_from(net, tmp_path / "tf.keras")
    assert net._tltf_preprocess == "tf" and dict(net._tltf_preprocess_kwargs) == {}


def test_bare_backbone_file_and_shape_mismatch(tmp_path):
    """A saved headless backbone works too; a narrower MobileNetV2 (alpha 0.35) is refused naming the layer."""
    narrow = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3),
                                            alpha=0.35)
    narrow.name = "mobilenet_v2"
    narrow.save(tmp_path / "narrow.keras")
    net = backbones.get("mobilenet_v2").build(SIZE, weights="none")
    before = _weights(net)
    with pytest.raises(TltfError) as info:
        copy_backbone_from(net, tmp_path / "narrow.keras")
    assert str(info.value) == (f"--weights {tmp_path / 'narrow.keras'}: does not match mobilenet_v2 "
                               "(layer Conv1: shape (3, 3, 3, 16) vs (3, 3, 3, 32))")
    after = _weights(net)
    assert all(np.array_equal(a, b) for name in before for a, b in zip(before[name], after[name]))
    assert not hasattr(net, "_tltf_preprocess")
    same = keras.applications.MobileNetV2(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))
    same.name = "mobilenet_v2"
    _randomise(same, seed=3)
    same.save(tmp_path / "bare.keras")
    copy_backbone_from(net, tmp_path / "bare.keras")
    np.testing.assert_array_equal(net.get_layer("block_7_expand").get_weights()[0],
                                  same.get_layer("block_7_expand").get_weights()[0])
    assert not hasattr(net, "_tltf_preprocess")  # a bare backbone carries no normalisation


def test_other_architecture_and_unreadable_files(tmp_path):
    other = build_classifier("mobilenet", ["a", "b"], SIZE, weights="none")
    other.save(tmp_path / "v1.keras")
    with pytest.raises(TltfError, match=r"v1\.keras: does not match mobilenet_v2 \(layer Conv1: not in the "
                                        r"file's backbone mobilenet\)"):
        build_classifier("mobilenet_v2", ["a", "b"], SIZE, weights=str(tmp_path / "v1.keras"))
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(TltfError, match=r"^--weights .*junk\.keras: not a loadable Keras model"):
        build_classifier("mobilenet_v2", ["a", "b"], SIZE, weights=str(tmp_path / "junk.keras"))
