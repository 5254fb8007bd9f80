"""LP-FT's first step: the head set to the logistic-regression optimum on the frozen features."""

import keras
import numpy as np
from test_engine import _config, blobs

from tltf import backbones
from tltf.models.classifier import build_classifier, head_of
from tltf.strategies.features import feature_extractor
from tltf.strategies.linear_probe_init import choose_c, fit_probe
from tltf.training import fit


def _features(num_classes: int):
    keras.utils.set_random_seed(0)
    names = ["a", "b", "c"][:num_classes]
    model = build_classifier(backbones.get("cnn_small"), names, 24, "none")
    x, y = blobs(90, seed=4)
    keep = y < num_classes
    x, y = x[keep], y[keep]
    feats = np.asarray(feature_extractor(model).predict_on_batch(x.astype(np.float32)), np.float64)
    return model, x, y, feats


def test_imprinted_head_is_the_convex_optimum():
    from sklearn.linear_model import LogisticRegression

    for k in (3, 2):  # softmax head, and the one-sigmoid binary head
        model, x, y, feats = _features(k)
        kernel, bias, report = fit_probe(feats, y, k, seed=0)
        head = head_of(model).dense
        head.kernel.assign(kernel)
        head.bias.assign(bias)
        mean, std = feats.mean(axis=0), feats.std(axis=0) + 1e-6
        reference = LogisticRegression(C=report["C"], max_iter=5000).fit((feats - mean) / std, y)
        expected = reference.predict_proba((feats - mean) / std)
        out = np.asarray(model(x.astype(np.float32), training=False), np.float64)
        probs = np.concatenate([1 - out, out], axis=1) if k == 2 else out
        assert np.abs(probs - expected).max() < 1e-4
        # the head's own training loss is the solver's, within float32 rounding
        loss = -np.mean(np.log(probs[np.arange(len(y)), y]))
        assert abs(loss - report["train_log_loss"]) < 1e-4 and report["train_accuracy"] > 0.9


def test_cv_folds_are_stratified_and_seeded():
    _, _, y, feats = _features(3)
    x = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    c1, s1 = choose_c(x, y, seed=3)
    c2, s2 = choose_c(x, y, seed=3)
    assert c1 == c2 and s1 == s2 and len(s1) == 7
    _, s3 = choose_c(x, y, seed=4)
    assert s3 != s1  # another seed, other folds
    from sklearn.model_selection import StratifiedKFold

    for _, held in StratifiedKFold(5, shuffle=True, random_state=3).split(x, y):
        assert len(set(np.bincount(y[held]))) == 1  # 30 per class -> 6 per class in each fold


def _data_and_start(tmp_path, n: int, seed: int):
    """An .npz of ``n`` blob images and a saved random cnn_small classifier as the "pretrained" starting point."""
    x, y = blobs(n, seed=seed)
    path = tmp_path / "blobs.npz"
    np.savez(path, x=x, y=y)
    start = tmp_path / "start.keras"
    keras.utils.set_random_seed(2)
    build_classifier(backbones.get("cnn_small"), ["0", "1", "2"], 24, "none").save(start)
    return path, start


def test_fit_with_lp_init_starts_from_the_probe(tmp_path):
    path, start = _data_and_start(tmp_path, 90, seed=5)
    metrics = fit(_config(path, tmp_path / "r", weights=str(start), stage="finetune", epochs=2, lp_init=True,
                          learning_rate=1e-5, refit="off"), verbose=0)
    assert metrics["methods"] == ["supervised", "lp_init"] and metrics["lp_init"]["C"] > 0
    assert metrics["lp_init"]["train_accuracy"] > 0.9
    assert [s["name"] for s in metrics["stages"]] == ["all"]  # the LP replaced finetune's head stage
    assert metrics["stages"][0]["accuracy"] > 0.8  # at a tiny rate the head stays where the probe put it


def test_lp_replaces_the_head_stages_and_the_holdout_can_choose_it_alone(tmp_path):
    """--stage feature with the LP is the LP alone (no Adam epochs); with --refit the hold-out compares the LP head
    with every later epoch, and a tie goes to fewer epochs."""
    from tltf.training.refit import chosen_epochs

    path, start = _data_and_start(tmp_path, 60, seed=6)
    lp = fit(_config(path, tmp_path / "lp", weights=str(start), stage="feature", refit="on"), verbose=0)
    assert lp["epochs"] == 0 and lp["stages"] == [] and lp["refit"]["chosen_epochs"] == 0
    assert lp["num_train"] == 60 and lp["lp_init"]["num_train"] == 60  # the LP of the final model saw every image
    assert lp["refit"]["holdout_lp_val_accuracy"] == lp["val_accuracy"]
    tuned = fit(_config(path, tmp_path / "ft", weights=str(start), stage="finetune", epochs=2, refit="off"),
                verbose=0)
    assert [s["name"] for s in tuned["stages"]] == ["all"] and tuned["lp_init"]["replaced_stages"] == ["head"]
    assert tuned["lp_init"]["val_accuracy"] is not None
    rows = [{"epoch": 0, "val_accuracy": 0.8}, {"epoch": 1, "val_accuracy": 0.9}, {"epoch": 2, "val_accuracy": 0.9}]
    assert chosen_epochs(rows, (0.9, 0.3)) == 0 and chosen_epochs(rows, (0.85, 0.3)) == 2  # ties: fewer epochs
    # one standard error of 0.9 on 20 images is 0.067: the LP's 0.85 is as good; on 1,000 images it is not
    assert chosen_epochs(rows, (0.85, 0.3), num_val=20) == 0 and chosen_epochs(rows, (0.85, 0.3), num_val=1000) == 2
    assert chosen_epochs(rows) == 2 and chosen_epochs(rows, num_val=20) == 2  # 1 epoch (0.8) is > 1 SE below
    assert chosen_epochs(rows, (0.5, 0.9), num_val=6) == 0  # 6 held-out images cannot choose fine-tuning


def test_views_at_c_over_copies_keep_the_regularisation_of_the_originals():
    """Each view is one more copy in the summed loss, so C / (views + 1) on the stack is C on the originals: with
    views that are exact copies the head is the same."""
    from tltf.strategies.probe_views import stack

    _, _, y, feats = _features(3)
    kernel, bias, _ = fit_probe(feats, y, 3, c=0.3)
    copies = np.stack([feats] * 4)
    x4, y4 = stack(feats, y, copies)
    assert x4.shape == (5 * len(y), feats.shape[1]) and (y4[len(y):2 * len(y)] == y).all()
    kernel5, bias5, _ = fit_probe(x4, y4, 3, c=0.3 / 5)
    assert np.abs(kernel5 - kernel).max() < 1e-3 * np.abs(kernel).max()
    assert np.abs(bias5 - bias).max() < 1e-2


def test_auto_keeps_views_that_are_more_of_the_class_and_drops_views_that_are_not():
    """Decided on folds split by image and scored on held-out originals: views drawn from each image's own class
    (what a label-preserving augmentation gives) help; views drawn from another class do not."""
    from tltf.strategies.probe_views import views_help

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 20))
    y = np.repeat(np.arange(4), 6)
    x = centres[y] + rng.normal(0, 2.0, (len(y), 20))
    same = np.stack([centres[y] + rng.normal(0, 2.0, x.shape) for _ in range(6)])
    other = np.stack([centres[(y + 1) % 4] + rng.normal(0, 2.0, x.shape) for _ in range(6)])
    helps, report = views_help(x, y, same, c=1.0, folds=5, seed=0)
    assert helps and report["folds"] == 5 and report["with"]["log_loss"] < report["without"]["log_loss"]
    hurts, report = views_help(x, y, other, c=1.0, folds=5, seed=0)
    assert not hurts and report["with"]["accuracy"] < report["without"]["accuracy"]
    assert views_help(x, y, same, c=1.0, folds=5, seed=0) == views_help(x, y, same, c=1.0, folds=5, seed=0)


def test_fit_records_the_views_the_lp_head_saw(tmp_path):
    from tltf.strategies.probe_views import view_features

    path, start = _data_and_start(tmp_path, 60, seed=7)
    run = fit(_config(path, tmp_path / "v", weights=str(start), stage="feature", refit="off", augment="crop",
                      lp_views="3"), verbose=0)
    assert run["lp_init"]["views"] == {"used": 3, "why": "--lp-views 3"}
    auto = fit(_config(path, tmp_path / "a", weights=str(start), stage="feature", refit="off", augment="crop",
                       lp_views="auto"), verbose=0)
    views = auto["lp_init"]["views"]
    assert views["why"].startswith("auto: 8 views") and views["used"] in (0, 8) and views["folds"]["folds"] == 5
    off = fit(_config(path, tmp_path / "o", weights=str(start), stage="feature", refit="off"), verbose=0)
    assert off["lp_init"]["views"] == {"used": 0, "why": "--lp-views off"}  # the default
    bare = fit(_config(path, tmp_path / "n", weights=str(start), stage="feature", refit="off", lp_views="auto"),
               verbose=0)
    assert bare["lp_init"]["views"] == {"used": 0, "why": "--augment none: no views to make"}
    # the views themselves: one per image and view, in the split's order, the same for the same seed
    from tltf.data import load_data
    from tltf.data.augment import Augment
    from tltf.models.loading import load_model

    model, split = load_model(start), load_data(str(path), 0.2, 0).train
    a = view_features(model, split, Augment.parse("crop"), 2, batch_size=16, seed=1)
    b = view_features(model, split, Augment.parse("crop"), 2, batch_size=16, seed=1)
    assert a.shape[:2] == (2, len(split)) and np.array_equal(a, b) and not np.allclose(a[0], a[1])


def test_dry_run_says_why_the_lp_takes_no_views():
    import json

    from conftest import cli

    args = ("fit", "--data", "builtin:shapes", "--weights", "torchvision:mobilenet_v2", "--dry-run")
    shown = json.loads(cli(*args).stdout)
    assert shown["defaults"]["lp_views"].startswith("off: on the small-data suite")
    assert "lp_views" not in json.loads(cli(*args, "--lp-views", "4").stdout)["defaults"]
    assert "--lp-views 99: choose auto, off or a number" in cli(*args, "--lp-views", "99").stderr


def test_fine_tuning_that_does_not_beat_the_lp_head_on_validation_is_undone(tmp_path):
    """The LP head scores 1.0 on the 18 validation images (seeds 0-4), so fine-tuning cannot beat it; at a rate
    that wrecks the backbone it mostly falls below (0.33-0.67 on 3 of 5 seeds, a tie on the others). The model
    saved is the LP head on the untouched starting backbone (what --stage feature gives)."""
    from tltf.models.classifier import backbone_of
    from tltf.models.loading import load_model

    path, start = _data_and_start(tmp_path, 90, seed=8)
    lp = fit(_config(path, tmp_path / "lp", weights=str(start), stage="feature", refit="off"), verbose=0)
    wrecked = fit(_config(path, tmp_path / "ft", weights=str(start), stage="finetune", epochs=3, refit="off",
                          learning_rate=3.0), verbose=0)
    report = wrecked["lp_init"]
    assert report["fine_tuning_kept"] is False and report["fine_tuning_val_accuracy"] <= report["val_accuracy"]
    assert wrecked["val_accuracy"] == report["val_accuracy"] == lp["val_accuracy"]
    saved, first = load_model(tmp_path / "ft" / "model.keras"), load_model(start)
    for a, b in zip(backbone_of(saved).get_weights(), backbone_of(first).get_weights()):
        np.testing.assert_array_equal(a, b)
    x = np.random.default_rng(0).uniform(0, 255, (8, 24, 24, 3)).astype("float32")
    np.testing.assert_allclose(saved.predict(x, verbose=0),
                               load_model(tmp_path / "lp" / "model.keras").predict(x, verbose=0), atol=1e-5)


def test_fine_tuning_is_kept_only_when_it_beats_the_lp_head_by_one_standard_error(tmp_path):
    """The LP head at 0.80 on 100 validation images: a last epoch at 0.95 wins by more than one standard error
    (0.022) and stays; one at 0.82 (within 0.038) goes back to the LP head's weights."""
    from types import SimpleNamespace

    from tltf.strategies.linear_probe_init import LinearProbeInit

    method = LinearProbeInit(None)
    for last, kept in ((0.95, True), (0.82, False)):
        (tmp_path / "history.csv").write_text(f"epoch,val_accuracy\n0,0.99\n1,{last}\n")
        restored = []
        run = SimpleNamespace(folder=SimpleNamespace(path=tmp_path), data=SimpleNamespace(val=[0] * 100),
                              model=SimpleNamespace(set_weights=restored.append), verbose=0)
        method.report_, method.start_weights = {"val_accuracy": 0.8, "val_loss": 0.5}, ["lp weights"]
        method.trained(run)
        assert method.report_["fine_tuning_kept"] is kept and method.report_["fine_tuning_val_accuracy"] == last
        assert restored == ([] if kept else [["lp weights"]])  # the last epoch decides, not the best (0.99)
        metrics = {"val_accuracy": last}
        method.finish(run, metrics)
        assert metrics["val_accuracy"] == (last if kept else 0.8)
