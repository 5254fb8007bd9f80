"""MMD, CORAL and AdaBN as plug-ins of the engine; the label-free criteria; ``tltf compare --adapt``."""

import json
from dataclasses import replace

import keras
import numpy as np
import pytest
from conftest import cli, write_image_folder

from tltf.adapt.adabn import adapt_batchnorm, batchnorm_layers
from tltf.adapt.discrepancy import coral, mmd
from tltf.adapt.selection import dev_risk, snd
from tltf.errors import TltfError
from tltf.models.classifier import build_classifier
from tltf.training.methods import adapt_parts


def _features(n, d=8, shift=0.0, scale=1.0, seed=0):
    return (np.random.default_rng(seed).normal(size=(n, d)) * scale + shift).astype("float32")


def test_mmd_is_zero_for_identical_batches_and_grows_with_a_mean_shift():
    x = _features(64)
    assert float(mmd(x, x)) == 0.0
    values = [float(mmd(x, _features(64, shift=s, seed=1))) for s in (0.0, 0.5, 1.0, 2.0)]
    assert values == sorted(values) and values[0] < 0.3 * values[1]
    assert float(mmd(x[..., None, None].reshape(64, 1, 1, 8), x.reshape(64, 1, 1, 8))) == 0.0  # 4-D maps pool


def test_coral_matches_a_numpy_reference():
    xs, xt = _features(40, d=6), _features(50, d=6, scale=2.0, seed=1) @ np.eye(6, k=1).astype("float32")
    d = xs.shape[1]
    reference = np.sum((np.cov(xs, rowvar=False) - np.cov(xt, rowvar=False)) ** 2) / (4 * d * d)
    assert float(coral(xs, xt)) == pytest.approx(reference, rel=1e-4)
    assert float(coral(xs, xs + 3.0)) == pytest.approx(0.0, abs=1e-6)  # a mean shift is not CORAL's business


def test_adabn_changes_only_batchnorm_statistics():
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = build_classifier("cnn_small_bn", ["a", "b"], 28, "none")
    layers = batchnorm_layers(model)
    for layer in layers:
        layer.trainable = False  # as a frozen pretrained backbone's: AdaBN adapts them all the same
    assert len(layers) == 3
    stats = {id(v) for layer in layers for v in (layer.moving_mean, layer.moving_variance)}
    before = {id(v): np.array(v) for v in model.weights}
    target = np.random.default_rng(0).uniform(100, 255, (48, 28, 28, 3)).astype("float32")
    used = adapt_batchnorm(model, tf.data.Dataset.from_tensor_slices(target).batch(16))
    assert used == 3 and not any(layer.trainable for layer in layers)  # the flags are restored
    changed = {id(v) for v in model.weights if not np.array_equal(before[id(v)], np.array(v))}
    assert changed == stats
    # the first BatchNorm's mean is the target's: its conv's output on the preprocessed target, averaged per batch
    net = model.get_layer("backbone").net
    conv = keras.Model(net.inputs, net.get_layer("block1_conv").output)
    pixels = model.get_layer("preprocess")(target)
    expected = np.mean([np.asarray(conv(pixels[i:i + 16])).mean(axis=(0, 1, 2)) for i in (0, 16, 32)], axis=0)
    np.testing.assert_allclose(np.array(layers[0].moving_mean), expected, rtol=1e-4, atol=1e-4)


def test_adapt_parts_and_errors():
    assert adapt_parts("dann") == ["dann"] and adapt_parts("MMD+AdaBN") == ["mmd", "adabn"]
    for bad in ("bogus", "adabn+dann", "none+adabn", "dann+mmd", "dann+adabn+adabn"):
        with pytest.raises(TltfError, match="--adapt"):
            adapt_parts(bad)


def test_snd_prefers_clustered_predictions_and_dev_tracks_the_loss():
    rng = np.random.default_rng(0)
    confident = np.eye(4)[rng.integers(0, 4, 200)] * 0.9 + 0.025
    scattered = rng.dirichlet(np.ones(4), 200)
    assert snd(confident) > snd(scattered)
    # same domains: the importance weights are ~1 and DEV is about the plain mean validation loss
    feats = rng.normal(size=(600, 5))
    losses = rng.uniform(0, 2, 200)
    assert dev_risk(feats[:200], feats[200:400], feats[400:], losses) == pytest.approx(losses.mean(), abs=0.15)


# --- through the engine --------------------------------------------------------------------------------------------

def _toy(n, size=32, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, size=(n, size, size, 3)) + shift
    y = np.arange(n) % 3
    x[y == 1, 2:10, 2:10] += 150
    x[y == 2, 14:22, 14:22] += 150
    return np.clip(x, 0, 255).round().astype(np.uint8), y


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    root = tmp_path_factory.mktemp("domains")
    xs, ys = _toy(90)
    xt, yt = _toy(60, shift=70, seed=1)
    return (write_image_folder(root / "source", xs, ys, ["a", "b", "c"]),
            write_image_folder(root / "target", xt, yt, ["a", "b", "c"]))


COMMON = ("--weights", "none", "--epochs", "2", "--batch-size", "16", "--image-size", "32",
          "--augment", "none", "--quiet", "--target-labels-for-eval")


@pytest.mark.parametrize("adapt, backbone", [("mmd", "cnn_small"), ("coral", "cnn_small"),
                                             ("adabn", "cnn_small_bn"), ("dann+adabn", "cnn_small_bn")])
def test_each_method_trains_saves_a_plain_classifier_and_reports(domains, tmp_path, adapt, backbone):
    from tltf.api import load_model

    source, target = domains
    result = cli("fit", "--data", source, "--target-data", target, "--adapt", adapt, "--backbone", backbone,
                 "--out", tmp_path / "run", *COMMON)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["methods"][0] == {"mmd": "mmd", "coral": "coral"}.get(adapt, "source_only" if adapt == "adabn"
                                                                          else "dann")
    assert metrics["source_val_accuracy"] > 0.5 and 0.0 <= metrics["target_accuracy"] <= 1.0  # chance 1/3
    assert set(metrics["unsupervised"]) >= {"dev_risk", "snd", "target_entropy"}
    history = (tmp_path / "run" / "history.csv").read_text().splitlines()
    if adapt in ("mmd", "coral"):
        header = history[0].split(",")
        weights = [float(row.split(",")[header.index("align_weight")]) for row in history[1:]]
        assert 0 < weights[0] < weights[1] <= 1.0  # the warm-up towards --align-weight
        assert "align_loss" in header
    if "adabn" in adapt:
        assert metrics["adabn"]["images"] == 60 and metrics["adabn"]["target_accuracy_before"] is not None
    model = load_model(tmp_path / "run" / "model.keras")
    assert [layer.name for layer in model.layers] == ["pixels", "preprocess", "backbone", "head"]
    x = _toy(4)[0].astype("float32")
    assert model.predict(x, verbose=0).shape == (4, 3)
    if adapt == "dann+adabn":  # the adapted model exports like any classifier, the parity gate included
        exported = cli("export", tmp_path / "run" / "model.keras", "--onnx", "--out", tmp_path / "m.onnx")
        assert exported.exit_code == 0, exported.output
        assert (tmp_path / "m.onnx").stat().st_size > 100_000


def test_adabn_refuses_a_backbone_without_batchnorm(domains, tmp_path):
    source, target = domains
    result = cli("fit", "--data", source, "--target-data", target, "--adapt", "adabn", "--backbone", "cnn_small",
                 "--out", tmp_path / "run", *COMMON)
    assert result.exit_code == 2 and "has no BatchNorm layers" in result.stderr
    assert not (tmp_path / "run" / "model.keras").exists()


def test_interrupted_coral_run_resumes_at_its_epoch_with_its_warm_up(domains, tmp_path):
    """Killed after epoch 1 and run again: the history goes on at epoch 2 (not from 0), and the alignment weight's
    warm-up is exactly an uninterrupted run's."""
    from tltf.api import FitConfig, fit

    source, target = domains

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    config = FitConfig(data=str(source), target_data=str(target), adapt="coral", backbone="cnn_small",
                       weights="none", epochs=3, batch_size=16, image_size=32, augment="none",
                       out=str(tmp_path / "r"), tensorboard=False)
    with pytest.raises(KeyboardInterrupt):
        fit(config, verbose=0, callbacks=[Interrupt()])
    fit(config, verbose=0)

    def history(folder):
        rows = (folder / "history.csv").read_text().splitlines()
        header = rows[0].split(",")
        return ([int(float(r.split(",")[header.index("epoch")])) for r in rows[1:]],
                [float(r.split(",")[header.index("align_weight")]) for r in rows[1:]])

    epochs, weights = history(tmp_path / "r")
    assert epochs == [0, 1, 2] and weights[0] < weights[1] < weights[2] <= 1.0
    fit(replace(config, out=str(tmp_path / "whole")), verbose=0)
    assert np.allclose(weights, history(tmp_path / "whole")[1], rtol=0, atol=1e-6)


def test_compare_adapt_selects_a_method_without_target_labels(domains, tmp_path):
    source, target = domains
    result = cli("compare", "--data", source, "--target-data", target, "--target-labels-for-eval",
                 "--adapt", "none,coral", "--backbone", "cnn_small", "--weights", "none", "--epochs", "1",
                 "--batch-size", "16", "--image-size", "32", "--augment", "none", "--seeds", "2",
                 "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert report["criterion"] == "auto" and report["selected"] in ("none", "coral")
    assert report["judged_metric"] == "target_accuracy" and report["baseline"] == "none"
    rows = {row["strategy"]: row for row in report["summary"]}
    for row in rows.values():
        assert row["seeds"] == 2 and 0 <= row["target_accuracy_mean"] <= 1 and row["dev_risk_mean"] is not None
    from tltf.compare import select_method

    best = min(rows.values(), key=lambda row: row["dev_risk_mean"])["strategy"]  # the lowest estimated risk
    assert report["selection"]["picks"]["dev_risk"] == best
    assert report["selected"] == select_method(report["summary"], "auto")["selected"]

    without_val = [{**row, "dev_risk_mean": None} for row in report["summary"]]  # no source validation split
    snd_best = max(rows.values(), key=lambda row: row["snd_mean"])["strategy"]
    assert select_method(without_val, "dev_risk") == {"criterion": "snd", "selected": snd_best}
    assert "Selected without target labels" in (tmp_path / "cmp" / "compare.md").read_text()
    bad = cli("compare", "--data", source, "--adapt", "none,dann", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "--adapt: needs --target-data" in bad.stderr


def test_dry_run_says_why_adaptation_trains_20_epochs_and_the_dann_lambda(domains):
    source, target = domains
    result = cli("fit", "--data", source, "--target-data", target, "--adapt", "dann", "--backbone", "cnn_small",
                 "--weights", "none", "--dry-run", "--out", "unused")
    assert result.exit_code == 0, result.output
    described = json.loads(result.stdout)
    assert described["config"]["epochs"] == 20 and described["defaults"]["epochs"].startswith("20: domain adaptation")
    assert described["defaults"]["lambda_max"].startswith("0.3: ")
    assert described["defaults"]["target_entropy"].startswith("0 (off): ")
    assert described["defaults"]["ema"].startswith("auto: the weights averaged over about the last 10 %")
    given = cli("fit", "--data", source, "--target-data", target, "--adapt", "dann", "--lambda-max", "0.5",
                "--epochs", "3", "--ema", "0.99", "--dry-run", "--out", "unused")
    described = json.loads(given.stdout)
    assert described["config"]["epochs"] == 3 and "epochs" not in described["defaults"]
    assert "lambda_max" not in described["defaults"] and "ema" not in described["defaults"]
    assert "target_entropy" in described["defaults"]  # still at its default: why it is off


def test_target_entropy_term_matches_numpy_and_lowers_the_target_entropy(domains, tmp_path):
    """--target-entropy: the loss term is the mean entropy of the target predictions (numpy reference), its weight
    warms up like lambda (history's entropy_weight), and the trained model is more confident on the target."""
    from tltf.adapt.dann import build_dann

    probs = np.random.default_rng(0).dirichlet(np.ones(3), 16).astype("float32")
    dann = build_dann(build_classifier("cnn_small", ["a", "b", "c"], 32, "none"))
    assert float(dann._entropy(probs)) == pytest.approx(float(np.mean(-np.sum(probs * np.log(probs), axis=1))),
                                                       rel=1e-4)
    source, target = domains
    entropy = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"te{weight}"
        result = cli("fit", "--data", source, "--target-data", target, "--adapt", "dann", "--backbone", "cnn_small",
                     "--target-entropy", weight, "--out", out, *COMMON)
        assert result.exit_code == 0, result.output
        entropy[weight] = json.loads((out / "metrics.json").read_text())["unsupervised"]["target_entropy"]
    history = (tmp_path / "te1.0" / "history.csv").read_text().splitlines()
    header = history[0].split(",")
    weights = [float(row.split(",")[header.index("entropy_weight")]) for row in history[1:]]
    assert 0 < weights[0] < weights[1] <= 1.0
    assert entropy[1.0] < 0.8 * entropy[0.0], entropy
