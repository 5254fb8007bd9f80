"""--precision mixed and --jit: the switches train, the head's output stays float32, the model saves and loads."""

import json

import keras
import numpy as np

from conftest import cli
from test_distribute import _toy_npz
from tltf.api import load_model


def test_mixed_precision_and_xla_fit(tmp_path):
    data = _toy_npz(tmp_path / "toy.npz", n=180)
    out = tmp_path / "run"
    result = cli("fit", "--data", data, "--backbone", "cnn_small", "--weights", "none", "--stage", "scratch",
                 "--epochs", "3", "--image-size", "24", "--batch-size", "16", "--augment", "none", "--dropout", "0",
                 "--precision", "mixed", "--jit", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["jit_effective"] is True and saved["precision"] == "mixed"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["val_accuracy"] > 0.8  # chance is 1/3
    keras.mixed_precision.set_global_policy("mixed_float16")  # as a consumer running mixed would load it
    try:
        model = load_model(out / "model.keras")
        probs = model(np.zeros((2, 24, 24, 3), np.float32), training=False)
        assert probs.dtype == "float32"  # the head computes and outputs float32 under mixed precision
        assert model.get_layer("head").dense.compute_dtype == "float32"  # the softmax layer
        assert model.get_layer("backbone").compute_dtype == "float16"  # the rest runs in float16
        assert np.allclose(np.sum(np.asarray(probs), axis=1), 1.0, atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy("float32")
