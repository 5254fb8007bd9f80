"""Few-shot: the episode sampler, prototype classifiers imprinted into the head, --stage prototypes, tltf fewshot."""

import json

import keras
import numpy as np
import pytest
from conftest import cli
from test_engine import _config, blobs

from tltf import backbones
from tltf.errors import TltfError
from tltf.fewshot import evaluate_episodes, imprint, nearest_prototype, normalise, prototypes, sample_episode
from tltf.fewshot.prototypes import standardiser
from tltf.models.classifier import build_classifier, head_of
from tltf.strategies.features import feature_extractor
from tltf.training import fit


def test_episodes_never_put_a_query_image_in_the_support_set():
    labels = np.repeat(np.arange(8), [30, 25, 20, 6, 40, 3, 22, 30])
    rng = np.random.default_rng(0)
    for _ in range(200):
        support, query, classes = sample_episode(labels, ways=5, shots=5, queries=15, rng=rng)
        assert not set(support) & set(query)
        assert len(set(classes)) == 5 and 5 not in classes  # class 5 has 3 images: too few for 5 shots + 1 query
        assert len(support) == 25 and np.array_equal(np.bincount(labels[support], minlength=8)[classes], [5] * 5)
        assert set(labels[query]) == set(classes) and all(np.sum(labels[query] == k) <= 15 for k in classes)
    with pytest.raises(TltfError, match="--ways 8 --shots 5: only 7 classes"):
        sample_episode(labels, ways=8, shots=5, queries=15, rng=rng)


def test_imprinted_head_is_the_nearest_prototype():
    """The Dense kernel and bias of imprint() reproduce nearest-prototype on the standardised, L2-normalised
    features, for a softmax head and for the one-sigmoid binary head (and a class absent from training)."""
    rng = np.random.default_rng(1)
    for k in (4, 2):
        x = rng.normal(size=(60, 16)) * rng.uniform(0.1, 5, 16) + rng.normal(size=16)
        y = rng.integers(0, k, 60)
        y[y == k - 1] = 0 if k == 4 else y[y == k - 1]  # with 4 classes the last one has no image
        centre, inv_std, kernel, bias = imprint(x, y, k)
        z = normalise(x, centre, inv_std)
        logits = z @ kernel.astype(np.float64) + bias
        expected = nearest_prototype(z, prototypes(z, y, k))
        got = logits.argmax(axis=1) if k > 2 else (logits[:, 0] > 0).astype(int)
        assert np.array_equal(got, expected)
        if k == 4:
            assert not np.any(got == 3)


def test_standardising_beats_the_plain_nearest_mean_when_features_have_unequal_scales():
    """Ten informative features beside twenty noisy ones of 20x larger scale: the support's own statistics put them
    on an equal footing (the reason tltf standardises), the plain L2-normalised nearest mean drowns them."""
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(6), 60)
    means = rng.normal(size=(6, 10)) * 2
    x = np.concatenate([means[labels] + rng.normal(size=(360, 10)), rng.normal(size=(360, 20)) * 20], axis=1)
    x += 50  # features far from the origin, as ReLU features are
    result = evaluate_episodes(x, labels, shots=5, ways=5, episodes=100, seed=0)
    assert result.mean > 0.65 and result.mean > result.baseline_mean + 0.3  # measured 0.73 vs 0.21 (chance 0.2)
    assert 0 < result.ci95 < 0.05 and result.episodes == 100 and result.queries == 15
    again = evaluate_episodes(x, labels, shots=5, ways=5, episodes=100, seed=0)
    assert again == result  # seeded


def _data_and_start(tmp_path, n, seed):
    x, y = blobs(n, seed=seed)
    path = tmp_path / "blobs.npz"
    xt, yt = blobs(60, seed=seed + 100)
    np.savez(path, x=x, y=y, x_test=xt, y_test=yt)
    start = tmp_path / "start.keras"
    keras.utils.set_random_seed(2)
    build_classifier(backbones.get("cnn_small"), ["0", "1", "2"], 24, "none").save(start)
    return path, start


def test_stage_prototypes_imprints_the_head_and_the_refit_uses_every_image(tmp_path):
    path, start = _data_and_start(tmp_path, 45, seed=7)
    metrics = fit(_config(path, tmp_path / "p", weights=str(start), stage="prototypes"), verbose=0)
    assert metrics["methods"] == ["supervised", "prototypes"] and metrics["epochs"] == 0
    assert metrics["refit"]["chosen_epochs"] == 0 and metrics["num_train"] == 45  # 15 per class: refit on all
    assert metrics["prototypes"]["num_train"] == 45 and metrics["prototypes"]["shots"] == [15, 15, 15]
    assert metrics["refit"]["holdout_num_train"] == 36 and metrics["val_accuracy"] is not None
    # the saved model is an ordinary classifier whose predictions are the nearest prototypes of the training images
    model = keras.saving.load_model(tmp_path / "p" / "model.keras")
    assert head_of(model).normalize
    data = np.load(path)
    extractor = feature_extractor(model)
    train = np.asarray(extractor.predict_on_batch(data["x"].astype(np.float32)), np.float64)
    test = np.asarray(extractor.predict_on_batch(data["x_test"].astype(np.float32)), np.float64)
    mean, inv_std = standardiser(train)
    expected = nearest_prototype(normalise(test, mean, inv_std), prototypes(normalise(train, mean, inv_std),
                                                                             data["y"], 3))
    got = np.asarray(model.predict_on_batch(data["x_test"].astype(np.float32))).argmax(axis=1)
    assert np.mean(got == expected) >= 0.98  # float32 in the model, float64 here: a near-tie may flip
    assert metrics["test_accuracy"] > 0.6  # 3 classes: chance is 0.33
    # export needs nothing new: the normalising head is ordinary ONNX, and matches Keras
    import onnxruntime as ort

    from tltf.export.onnx import export_onnx

    export_onnx(model, tmp_path / "p.onnx")
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: data["x_test"].astype(np.float32)})[0]
    keras_out = np.asarray(model.predict_on_batch(data["x_test"].astype(np.float32)))
    assert np.abs(onnx_out - keras_out).max() < 1e-4


def test_stage_prototypes_then_fine_tuning_trains_every_layer(tmp_path):
    path, start = _data_and_start(tmp_path, 60, seed=8)
    metrics = fit(_config(path, tmp_path / "ft", weights=str(start), stage="prototypes", epochs=2, refit="off"),
                  verbose=0)
    assert [s["name"] for s in metrics["stages"]] == ["all"] and metrics["epochs"] == 2
    assert metrics["prototypes"]["val_accuracy"] is not None and metrics["test_accuracy"] > 0.6
    with pytest.raises(TltfError, match="--lp-init on"):
        fit(_config(path, tmp_path / "bad", weights=str(start), stage="prototypes", lp_init="on"), verbose=0)


def test_fewshot_command_prints_episodes_as_json(tmp_path):
    x, y = blobs(90, seed=9)
    path = tmp_path / "few.npz"
    np.savez(path, x=x, y=y, class_names=np.array(["a", "b", "c"]))
    result = cli("fewshot", "--data", path, "--backbone", "cnn_small", "--weights", "none", "--image-size", 24,
                 "--shots", "1,5", "--episodes", 50, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["shots"] for r in report["results"]] == [1, 5] and report["images"] == 90
    for r in report["results"]:
        assert set(r) >= {"shots", "ways", "episodes", "mean", "ci95"} and r["ways"] == 3 and r["episodes"] == 50
        assert r["mean"] > 0.45  # 3-way: chance 0.33
    assert report["results"][1]["mean"] >= report["results"][0]["mean"] - 0.02  # 5 shots no worse than 1
    bad = cli("fewshot", "--data", path, "--backbone", "cnn_small", "--weights", "none", "--shots", "0,x")
    assert bad.exit_code == 2 and "--shots 0,x" in bad.stderr and "Traceback" not in bad.output
    bad = cli("fewshot", "--data", path, "--backbone", "cnn_small", "--weights", "none", "--ways", 5)
    assert bad.exit_code == 2 and "--ways 5" in bad.stderr


def test_a_refit_reads_the_data_once(tmp_path, monkeypatch):
    """The refit decision, its hold-out run and its final run share one read of the data (a folder is scanned
    once, not three times)."""
    import tltf.data
    from tltf.training import engine

    path, start = _data_and_start(tmp_path, 45, seed=12)
    reads = []
    real = tltf.data.load_source

    def counting(*args, **kwargs):
        reads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(tltf.data, "load_source", counting)
    monkeypatch.setattr(engine, "load_source", counting)
    metrics = fit(_config(path, tmp_path / "p", weights=str(start), stage="prototypes"), verbose=0)
    assert metrics["refit"]["chosen_epochs"] == 0 and metrics["num_train"] == 45
    assert reads == [str(path)]
