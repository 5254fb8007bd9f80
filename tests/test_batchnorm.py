"""Precise BatchNorm: the moving statistics become the average of the batches' statistics under the final weights,
so a backbone trained from scratch for a short budget evaluates as well as it trains."""

import json

import keras
import numpy as np
import tensorflow as tf

from conftest import cli
from test_distribute import _toy_npz
from tltf import backbones
from tltf.models.classifier import backbone_layer, build_classifier
from tltf.staging.batchnorm import recompute_batchnorm


def test_recompute_sets_the_average_of_batch_statistics():
    keras.utils.set_random_seed(0)
    model = build_classifier(backbones.get("mobilenet_v2"), ["a", "b"], 32, "none", dropout=0.0, train_bn=True)
    net = backbone_layer(model).net
    conv = keras.Model(net.inputs, net.get_layer("Conv1").output)
    bn = net.get_layer("bn_Conv1")
    momentum = bn.momentum
    rng = np.random.default_rng(1)
    batches = [rng.uniform(0, 255, (8, 32, 32, 3)).astype("float32") for _ in range(3)]
    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(8)
    assert recompute_batchnorm(model, dataset, batches=16) == 3
    stats = [conv(model.get_layer("preprocess")(b)).numpy() for b in batches]
    means = [s.mean(axis=(0, 1, 2)) for s in stats]
    variances = [s.var(axis=(0, 1, 2)) for s in stats]
    np.testing.assert_allclose(bn.moving_mean.numpy(), np.mean(means, axis=0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), np.mean(variances, axis=0), rtol=1e-3, atol=1e-6)
    assert bn.momentum == momentum  # restored
    frozen = build_classifier(backbones.get("mobilenet_v2"), ["a", "b"], 32, "none", dropout=0.0, train_bn=False)
    for layer in backbone_layer(frozen).net.layers:
        layer.trainable = False
    assert recompute_batchnorm(frozen, dataset) == 0  # nothing trains: nothing changes


def test_scratch_mobilenet_evaluates_as_well_as_it_trains(tmp_path):
    """Without recomputed statistics this run validated at chance (a constant output) after 3 short epochs."""
    data = _toy_npz(tmp_path / "toy.npz", n=240, size=32)
    result = cli("fit", "--data", data, "--backbone", "mobilenet_v2", "--weights", "none", "--stage", "scratch",
                 "--epochs", "3", "--image-size", "32", "--batch-size", "16", "--augment", "none",
                 "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_accuracy"] > 0.6, metrics["val_accuracy"]
    model = keras.models.load_model(tmp_path / "run" / "model.keras")  # compiled, with tltf's optimizer
    assert model.optimizer.__class__.__module__ == "tltf.staging.optimizers"  # chance (a constant output) is 1/3; measured 0.79
