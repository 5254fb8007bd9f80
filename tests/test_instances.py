"""tltf.instances: influence scores of training examples (which labels are wrong?), tltf instances, and
tltf predict over a class-folder dataset."""

import csv

import numpy as np
import pytest
from conftest import cli, write_image_folder

from tltf.errors import TltfError
from tltf.instances import auto_drop_count
from tltf.instances.influence import SoftmaxHead, fit_head, influence_scores, leave_one_out
from tltf.instances.scoring import score_features

NAMES = ["blue", "green", "red"]  # class c: colour channel 2 - c bright
PLANTED = 3


def _blobs(n: int, d: int, k: int, seed: int, spread: float = 2.0):
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(0, spread, (k, d))
    y = np.arange(n) % k
    return centers[y] + rng.normal(0, 1, (n, d)), y


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_influence_agrees_with_exact_leave_one_out():
    """First-order influence vs refitting without each example, on a small logistic problem with two flips."""
    x, y = _blobs(60, 4, 3, seed=0)
    y[:2] = (y[:2] + 1) % 3
    xv, yv = _blobs(90, 4, 3, seed=1)
    head, info = fit_head(x, y, 3, l2=0.05, tol=1e-12)
    assert info.converged and info.gradient_norm < 1e-10
    approx = influence_scores(head, x, y, xv, yv, l2=0.05)
    assert approx.residual < 1e-6
    exact = leave_one_out(head, x, y, xv, yv, l2=0.05)
    assert _spearman(approx.scores, exact) > 0.9
    assert np.corrcoef(approx.scores, exact)[0, 1] > 0.9
    assert np.argmax(exact) == np.argmax(approx.scores) == 0  # a flipped label is the most harmful, both ways


def test_planted_flips_on_features_rank_first_and_auto_drops_them():
    x, y = _blobs(150, 8, 3, seed=2, spread=4.0)
    planted = np.array([5, 40, 77, 120])
    y[planted] = (y[planted] + 1) % 3
    xv, yv = _blobs(60, 8, 3, seed=3, spread=4.0)
    start = SoftmaxHead(np.zeros((8, 3)), np.zeros(3))
    scores, info = score_features(x, y, xv, yv, start)
    assert set(np.argsort(-scores)[:4]) == set(planted)
    assert info["refit_gradient_norm"] < 1e-8 and info["val_loss_refit"] < info["val_loss_model"]
    drop = auto_drop_count(scores)
    assert set(planted) <= set(np.argsort(-scores)[:drop]) and drop < 10


def test_auto_drop_count_rules():
    scores = np.array([5.0, 4.0, 0.1, 0.05, 0.01, -1.0, -2.0, np.nan])
    assert auto_drop_count(scores) == auto_drop_count(scores, "positive") == 4  # 5 positive, capped at half
    assert auto_drop_count(scores, "positive", max_fraction=1.0) == 5
    assert auto_drop_count(scores, "knee") == 2
    assert auto_drop_count(-np.abs(scores)) == 0
    with pytest.raises(TltfError, match="--select-instances best: choose"):
        auto_drop_count(scores, "best")


def _colour_images(n: int, seed: int, size: int = 20):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(50, 25, (n, size, size, 3))
    x[np.arange(n), :, :, 2 - y] += 150
    return np.clip(x, 0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A class-folder dataset of 60 colour images with 3 planted wrong labels (filed under the next class), a clean
    validation folder, and a cnn_small classifier whose head is fitted on its (random) features."""
    import keras

    from tltf.models.classifier import build_classifier, head_of
    from tltf.strategies.features import feature_extractor

    root = tmp_path_factory.mktemp("instances")
    x, y = _colour_images(60, seed=0)
    given = y.copy()
    given[:PLANTED] = (y[:PLANTED] + 1) % 3
    data = write_image_folder(root / "data", x, given, NAMES, fmt_cycle=("png",))
    xv, yv = _colour_images(24, seed=1)
    val = write_image_folder(root / "val", xv, yv, NAMES, fmt_cycle=("png",))
    keras.utils.set_random_seed(0)
    model = build_classifier("cnn_small", NAMES, image_size=20, weights="none")
    feats = np.asarray(feature_extractor(model).predict(x.astype(np.float32), verbose=0), np.float64)
    head, _ = fit_head(feats, y, 3, l2=1e-3)
    dense = head_of(model).dense
    dense.kernel.assign(head.kernel.astype(np.float32))
    dense.bias.assign(head.bias.astype(np.float32))
    path = root / "model.keras"
    model.save(path)
    files = [str(data / NAMES[given[i]] / f"{i:04d}.png") for i in range(PLANTED)]
    return {"data": data, "val": val, "model": path, "planted": files, "root": root}


def test_cli_instances_writes_sorted_scores_and_contact_sheet(planted, tmp_path, monkeypatch):
    monkeypatch.setenv("TLTF_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "report"
    result = cli("instances", planted["model"], "--data", planted["data"], "--val", planted["val"], "--out", out,
                 "--top", "8")
    assert result.exit_code == 0, result.output
    with open(out / "scores.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == ["file", "label", "predicted", "score"]
    assert len(rows) == 60
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["file"] for r in rows[:PLANTED]} == set(planted["planted"])  # files as found on disk
    for r in rows[:PLANTED]:  # filed under the next class; the model sees the colour
        assert NAMES.index(r["label"]) == (NAMES.index(r["predicted"]) + 1) % 3
    assert (out / "harmful.png").stat().st_size > 5000
    assert "auto would drop" in result.stdout


def test_score_data_default_holdout_and_in_memory_model(planted, monkeypatch, tmp_path):
    """Without --val: the stratified, seeded hold-out of --data (as tltf fit holds it out); scoring an in-memory
    model with Splits gives the same scores."""
    from tltf.data import load_source, stratified_split
    from tltf.instances import score_data, score_instances
    from tltf.models.loading import load_model

    monkeypatch.setenv("TLTF_CACHE", str(tmp_path / "cache"))
    scores, train = score_data(planted["model"], str(planted["data"]), val_split=0.25, seed=1)
    source = load_source(str(planted["data"]))
    kept, held = stratified_split(source.train.labels, 0.25, 1)
    assert len(scores) == len(kept) == len(train) and scores.info["num_val"] == len(held)
    assert all(name.endswith(".png") for name in scores.names)
    again = score_instances(load_model(planted["model"]), source.train.select(kept), source.train.select(held),
                            source.class_names, cache=False)
    np.testing.assert_allclose(again.scores, scores.scores, rtol=1e-6, atol=1e-12)
    keep = scores.keep(2)
    assert len(keep) == len(scores) - 2 and not set(scores.harmful(2)) & set(keep)


@pytest.mark.parametrize("args, message", [
    (["--data", "nowhere/"], "--data nowhere/: no such file or folder"),
    (["--top", "0"], "--top 0: must be at least 1"),
    (["--l2", "0"], "--l2 0: must be above 0"),
    (["--val-split", "0"], "--val-split 0: must be between 0 and 1"),
])
def test_cli_instances_bad_input_is_one_line(planted, tmp_path, args, message):
    base = {"--data": str(planted["data"]), "--out": str(tmp_path / "r")}
    flat = [part for kv in base.items() for part in kv]
    result = cli("instances", planted["model"], *flat, *args)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_instances_refuses_unknown_classes_and_missing_model(planted, tmp_path):
    other = write_image_folder(tmp_path / "other", *_colour_images(6, seed=5), ["blue", "green", "purple"])
    result = cli("instances", planted["model"], "--data", planted["data"], "--val", other, "--out", tmp_path / "r")
    assert result.exit_code == 2 and "--val: class 'purple' is not one of the model's classes" in result.stderr
    result = cli("instances", tmp_path / "none.keras", "--data", planted["data"], "--out", tmp_path / "r")
    assert result.exit_code == 2 and "MODEL" in result.stderr and "no such model file" in result.stderr
    (tmp_path / "file").write_text("")
    result = cli("instances", planted["model"], "--data", planted["data"], "--out", tmp_path / "file")
    assert result.exit_code == 2 and "--out" in result.stderr and "is a file, not a folder" in result.stderr


def test_binary_head_is_read_as_a_two_class_softmax(tmp_path):
    import keras

    from tltf.instances.scoring import model_head
    from tltf.models.classifier import build_classifier
    from tltf.models.head import class_probabilities
    from tltf.strategies.features import feature_extractor

    keras.utils.set_random_seed(1)
    model = build_classifier("cnn_small", ["no", "yes"], image_size=16, weights="none")
    x = np.random.default_rng(0).uniform(0, 255, (5, 16, 16, 3)).astype(np.float32)
    feats = feature_extractor(model).predict(x, verbose=0)
    expected = class_probabilities(model.predict(x, verbose=0))
    np.testing.assert_allclose(model_head(model).probabilities(feats), expected, atol=1e-5)


def test_predict_reads_a_class_folder_dataset(planted):
    import json

    result = cli("predict", planted["model"], planted["data"], "--json", "--top", "1")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    expected = sorted(str(p) for p in planted["data"].rglob("*.png"))
    assert [r["file"] for r in rows] == expected  # class by class, in name order, as --data reads them
    correct = [r["top"][0]["label"] == NAMES[2 - int(np.argmax(_mean_colour(r["file"])))] for r in rows]
    assert np.mean(correct) > 0.9


def _mean_colour(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), np.float64).mean(axis=(0, 1))
