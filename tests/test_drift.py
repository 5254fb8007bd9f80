"""``tltf drift``: the MMD and classifier two-sample tests, BBSE label shift, and the command's exit codes and JSON.

The statistics run on synthetic features (fast, with known answers); the command runs end to end on small
generated images through the tiny ``cnn_small`` backbone (random weights: features are still a fixed function of
the pixels, which is all a two-sample test needs).
"""

import json

import numpy as np
import pytest
from conftest import cli

from tltf.drift import bbse, classifier_test, mmd_test
from tltf.drift.label_shift import joint_confusion

# --- MMD -------------------------------------------------------------------------------------------------------


def test_mmd_statistic_is_the_unbiased_estimate(rng):
    x, y = rng.normal(size=(7, 3)), rng.normal(0.3, 1.0, size=(9, 3))
    result = mmd_test(x, y, permutations=10)
    sigma = result.bandwidth

    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma ** 2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    expected = ((kxx.sum() - np.trace(kxx)) / (7 * 6) + (kyy.sum() - np.trace(kyy)) / (9 * 8) - 2 * kxy.mean())
    assert result.statistic == pytest.approx(expected, rel=1e-10)
    z = np.concatenate([x, y])
    distances = np.sqrt(((z[:, None] - z[None]) ** 2).sum(-1))[np.triu_indices(16, 1)]
    assert sigma == pytest.approx(np.median(distances))


def test_same_distribution_is_not_drift_across_seeds():
    p = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        p.append(mmd_test(rng.normal(size=(150, 16)), rng.normal(size=(150, 16)), permutations=500, seed=seed).p_value)
    assert min(p) > 0.05 and np.mean(p) > 0.3, p  # uniform under the null: none below alpha, typically ~0.5


def test_mmd_p_values_are_calibrated_under_the_null():
    rng = np.random.default_rng(42)
    p = np.array([mmd_test(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)), permutations=99, seed=s).p_value
                  for s in range(200)])
    assert 0.02 <= (p < 0.05).mean() <= 0.09 and 0.4 <= np.median(p) <= 0.6


@pytest.mark.parametrize("shift", ["mean", "scale"])
def test_shifted_features_are_drift(rng, shift):
    x = rng.normal(size=(150, 16))
    y = rng.normal(size=(150, 16))
    if shift == "mean":
        y[:, :4] += 0.5
    else:
        y *= 1.3
    result = mmd_test(x, y, permutations=500)
    assert result.p_value < 0.01 and result.statistic > 0


def test_mmd_rejects_bad_features():
    from tltf.errors import TltfError

    with pytest.raises(TltfError, match="same width"):
        mmd_test(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(TltfError, match="NaN"):
        mmd_test(np.full((5, 3), np.nan), np.zeros((5, 3)))


# --- the domain classifier -------------------------------------------------------------------------------------


def test_classifier_test_finds_the_images_unlike_the_reference(rng):
    x = rng.normal(size=(200, 8))
    same = classifier_test(x, rng.normal(size=(200, 8)))
    assert 0.4 < same.auc < 0.6 and same.p_value > 0.05
    y = rng.normal(size=(200, 8))
    planted = np.arange(0, 200, 25)
    y[planted] += 4.0  # 8 outliers among the new points
    result = classifier_test(x, y)
    assert set(np.argsort(-result.scores)[:8]) == set(planted)


# --- BBSE label shift ------------------------------------------------------------------------------------------


def _predict(labels, confusion, rng):
    """Predictions drawn from P(ŷ | y) = confusion[:, y] (columns sum to 1)."""
    cumulative = confusion.cumsum(axis=0)[:, labels]
    return (rng.random(len(labels)) > cumulative).sum(axis=0)


@pytest.mark.parametrize("as_probabilities", [False, True])
def test_bbse_recovers_a_planted_prior(as_probabilities):
    rng = np.random.default_rng(3)
    k = 4
    confusion = np.full((k, k), 0.2 / (k - 1)) + np.eye(k) * (0.8 - 0.2 / (k - 1))  # 80 % right, errors uniform
    y_ref = rng.choice(k, size=6000, p=[0.25, 0.25, 0.25, 0.25])
    planted = np.array([0.1, 0.6, 0.2, 0.1])
    y_new = rng.choice(k, size=6000, p=planted)
    pred_ref, pred_new = _predict(y_ref, confusion, rng), _predict(y_new, confusion, rng)
    if as_probabilities:
        pred_ref, pred_new = np.eye(k)[pred_ref] * 0.7 + 0.075, np.eye(k)[pred_new] * 0.7 + 0.075
    shift = bbse(y_ref, pred_ref, pred_new, ["a", "b", "c", "d"])
    assert np.abs(shift.estimated_prior - planted).max() < 0.05
    assert shift.estimated_prior.sum() == pytest.approx(1.0) and (shift.estimated_prior >= 0).all()
    # the naive estimate (prediction rates) is pulled toward uniform by the errors; BBSE undoes that
    assert np.abs(shift.prediction_prior - planted).max() > 0.05
    assert shift.expected_accuracy == pytest.approx(0.8, abs=0.03)
    assert shift.reference_accuracy == pytest.approx((pred_ref.argmax(1) if as_probabilities else pred_ref)
                                                     .__eq__(y_ref).mean())


def test_bbse_clips_negative_priors_and_renormalises():
    y_ref = np.array([0, 0, 1, 1, 2, 2] * 50)
    pred_ref = y_ref.copy()
    pred_ref[::6] = 1  # some class-0 images read as class 1
    pred_new = np.array([1] * 100 + [2] * 100)  # fewer class-1 predictions than class 0 alone would cause
    shift = bbse(y_ref, pred_ref, pred_new, ["a", "b", "c"])
    assert (shift.estimated_prior >= 0).all() and shift.estimated_prior.sum() == pytest.approx(1.0)
    assert joint_confusion(y_ref, pred_ref, 3).sum() == pytest.approx(1.0)


# --- the command -----------------------------------------------------------------------------------------------

TINY = ["--backbone", "cnn_small", "--weights", "none", "--image-size", "32", "--permutations", "300"]
KEYS = {"drift", "p_value", "statistic", "classifier_auc", "n_reference", "n_data", "label_shift"}


@pytest.fixture
def shapes_npz(tmp_path, monkeypatch):
    """Reference, same-distribution and darker shapes (32 px) as .npz files; a private feature cache."""
    from tltf.data.builtin import SHAPES, shapes

    monkeypatch.setenv("TLTF_CACHE", str(tmp_path / "cache"))
    names = np.array(SHAPES)
    paths = {}
    for name, seed, scale in [("reference", 0, 1.0), ("same", 1, 1.0), ("darker", 2, 0.6)]:
        x, y = shapes(90, size=32, seed=seed)
        paths[name] = tmp_path / f"{name}.npz"
        np.savez(paths[name], x=(x * scale).astype(np.uint8), y=y, class_names=names)
    return paths


def test_cli_same_data_exits_0_and_shifted_data_exits_1(shapes_npz):
    same = cli("drift", "--reference", shapes_npz["reference"], "--data", shapes_npz["same"], *TINY, "--json")
    assert same.exit_code == 0, same.output
    report = json.loads(same.stdout)
    assert KEYS <= set(report) and report["drift"] is False and report["p_value"] > 0.1  # 0.22 with these seeds
    assert report["n_reference"] == report["n_data"] == 90 and report["label_shift"] is None

    shifted = cli("drift", "--reference", shapes_npz["reference"], "--data", shapes_npz["darker"], *TINY, "--json",
                  "--max-samples", "60")
    assert shifted.exit_code == 1, shifted.output
    report = json.loads(shifted.stdout)
    assert report["drift"] is True and report["p_value"] < 0.01 and report["classifier_auc"] > 0.9  # p = 1/301
    assert report["n_reference"] == report["n_data"] == 60


def test_cli_unlabelled_folder_and_contact_sheet(shapes_npz, tmp_path):
    from conftest import write_image_folder

    with np.load(shapes_npz["darker"]) as f:
        x = f["x"][:24]
    folder = write_image_folder(tmp_path / "new", x, np.zeros(len(x), int), ["flat"])
    flat = tmp_path / "flat"  # no class subfolders at all
    (folder / "flat").rename(flat)
    out = tmp_path / "report"
    result = cli("drift", "--reference", shapes_npz["reference"], "--data", flat, *TINY, "--out", out)
    assert result.exit_code == 1, result.output
    assert "verdict: DRIFT" in result.stdout and "label shift" not in result.stdout
    saved = json.loads((out / "drift.json").read_text())
    assert saved["n_data"] == 24 and len(saved["most_different"]) == 16
    assert all(d["file"].startswith(str(flat)) for d in saved["most_different"])
    scores = [d["score"] for d in saved["most_different"]]
    assert scores == sorted(scores, reverse=True)
    assert (out / "most_different.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_model_estimates_label_shift(shapes_npz, tmp_path):
    """A planted label shift that BBSE must recover exactly: the new data are the reference images themselves,
    class 0 three times over, class 1 once, class 2 not at all. Their predictions are then exactly C w for the
    class weights w, so any invertible confusion matrix C -- here a random network's, made to spread its
    outputs -- gives back the new prior (0.75, 0.25, 0) to rounding."""
    import keras

    from tltf.atomic import save_model
    from tltf.data.builtin import SHAPES
    from tltf.export.parity import spread_random_model
    from tltf.models.classifier import build_classifier

    keras.utils.set_random_seed(0)
    model = tmp_path / "model.keras"
    net = spread_random_model(build_classifier("cnn_small", list(SHAPES), 32, "none"))
    save_model(net, model)
    with np.load(shapes_npz["reference"]) as f:
        x, y = f["x"], f["y"]
    pred = net.predict(x.astype("float32"), verbose=0).argmax(axis=1)
    confusion = np.array([[np.sum((pred == i) & (y == j)) for j in range(3)] for i in range(3)])
    assert abs(np.linalg.det(confusion / len(y))) > 1e-4, confusion  # invertible: the estimate is determined
    pick = np.concatenate([np.flatnonzero(y == 0)] * 3 + [np.flatnonzero(y == 1)])
    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, x=x[pick], y=y[pick], class_names=np.array(SHAPES))
    result = cli("drift", "--reference", shapes_npz["reference"], "--data", shifted, "--model", model,
                 "--permutations", "200", "--json")
    assert result.exit_code == (1 if json.loads(result.stdout)["drift"] else 0), result.output
    shift = json.loads(result.stdout)["label_shift"]
    assert shift["class_names"] == list(SHAPES)
    assert shift["reference_prior"] == pytest.approx([1 / 3] * 3, abs=1e-6)  # the report rounds to 6 places
    assert shift["estimated_prior"] == pytest.approx([0.75, 0.25, 0.0], abs=1e-6)
    recall = np.diag(confusion) / 30  # the accuracy expected on the new data: its prior times the recalls
    assert shift["expected_accuracy"] == pytest.approx(0.75 * recall[0] + 0.25 * recall[1], abs=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--alpha", "1.5"], "--alpha 1.5: must be between 0 and 1"),
    (["--max-samples", "1"], "--max-samples 1: must be at least 2"),
    (["--data", "nowhere/"], "--data nowhere/: no such file or folder"),
    (["--model", "missing.keras"], "--model missing.keras: no such model file"),
    (["--model", "missing.keras", "--backbone", "resnet50"], "--backbone: not with --model"),
    (["--model", "{two_class_model}"], "class 'circle' is not one of the model's classes (x, y)"),
])
def test_cli_bad_input_is_one_line_and_exit_2(shapes_npz, tmp_path, args, message):
    if "{two_class_model}" in args:
        from tltf.atomic import save_model
        from tltf.models.classifier import build_classifier

        save_model(build_classifier("cnn_small", ["x", "y"], 32, "none"), tmp_path / "two.keras")
        args = [str(tmp_path / "two.keras") if a == "{two_class_model}" else a for a in args]
    options = {"--reference": str(shapes_npz["reference"]), "--data": str(shapes_npz["same"])}
    if "--model" not in args:
        options.update({"--backbone": "cnn_small", "--weights": "none"})
    options.update(dict(zip(args[::2], args[1::2])))
    result = cli("drift", *[part for pair in options.items() for part in pair])
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
