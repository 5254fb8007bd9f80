"""Zero-shot from class attributes: the table, calibrated stacking, the attribute head inside tltf fit."""

import csv

import keras
import numpy as np
import pytest

from tltf.errors import TltfError
from tltf.zeroshot.attributes import read_attributes
from tltf.zeroshot.calibration import choose_gamma, gzsl_scores, stacked_probabilities

UNSEEN = [("red", "circle"), ("green", "square"), ("blue", "triangle")]


def _table(path, rows, header=("class", "a", "b")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_attribute_table_is_read_scaled_and_checked(tmp_path):
    table = read_attributes(_table(tmp_path / "t.csv", [["x", 0, 0], ["y", 2, 1], ["z", 4, 0]]))
    assert table.class_names == ["x", "y", "z"] and table.attribute_names == ["a", "b"]
    assert np.allclose(table.matrix[:, 0], [0, 0.5, 1]) and np.allclose(table.matrix[:, 1], [0, 1, 0])  # counts
    with pytest.raises(TltfError, match="--data: class.*q not in the --attributes table"):
        table.index(["x", "q"])
    cases = {
        "needs a 'class' column": _table(tmp_path / "1.csv", [["x", 0, 1]], ("name", "a", "b")),
        "row 3, column b: not a number": _table(tmp_path / "2.csv", [["x", 0, 1], ["y", 1, "big"], ["z", 1, 1]]),
        "class x appears more than once": _table(tmp_path / "3.csv", [["x", 0, 1], ["x", 1, 0], ["z", 1, 1]]),
        "class z has the same attributes": _table(tmp_path / "4.csv", [["x", 0, 1], ["y", 1, 0], ["z", 0, 1]]),
        "2 classes; zero-shot needs": _table(tmp_path / "5.csv", [["x", 0, 1], ["y", 1, 0]]),
        "row 2 has 2 cells": _table(tmp_path / "6.csv", [["x", 0]]),
    }
    for problem, path in cases.items():
        with pytest.raises(TltfError, match=problem):
            read_attributes(path)
    with pytest.raises(TltfError, match="no such file"):
        read_attributes(tmp_path / "missing.csv")


def test_gamma_sends_the_chosen_share_of_seen_images_to_unseen_classes():
    rng = np.random.default_rng(0)
    seen = np.array([1, 1, 1, 0, 0], np.float32)
    scores = rng.normal(size=(400, 5))
    scores[:, :3] += 2.0  # seen images: their seen classes lead
    for rate in (0.05, 0.2):
        gamma = choose_gamma(scores, seen, rate)
        to_unseen = (~seen.astype(bool))[stacked_probabilities(scores, seen, gamma).argmax(axis=1)].mean()
        assert abs(to_unseen - rate) < 0.01
    assert choose_gamma(scores, np.ones(5)) == 0.0  # nothing unseen: nothing to calibrate


def test_generalised_zero_shot_scores_are_per_class_means_and_their_harmonic_mean():
    seen = np.array([1, 1, 0, 0])
    labels = np.array([0, 0, 1, 2, 3, 3])
    probs = np.array([[.7, .1, .1, .1],  # class 0 -> 0
                      [.1, .7, .1, .1],  # class 0 -> 1
                      [.1, .7, .1, .1],  # class 1 -> 1
                      [.6, .1, .1, .2],  # class 2 -> 0 (a seen class); among unseen: 3
                      [.1, .1, .1, .7],  # class 3 -> 3
                      [.1, .1, .7, .1]])  # class 3 -> 2
    r = gzsl_scores(probs, labels, seen)
    assert r["seen_accuracy"] == pytest.approx((0.5 + 1.0) / 2)  # per class: class 0 1/2, class 1 1/1
    assert r["unseen_accuracy"] == pytest.approx((0.0 + 0.5) / 2)
    assert r["harmonic_mean"] == pytest.approx(2 * 0.75 * 0.25 / 1.0)
    assert r["unseen_only_accuracy"] == pytest.approx((0.0 + 0.5) / 2)
    assert (r["num_seen"], r["num_unseen"]) == (3, 3)


def _shapes_task(tmp_path, n):
    from tltf.data.builtin import COLOURS, SHAPES, coloured_shapes

    combos = [(c, s) for c in COLOURS for s in SHAPES]
    seen = [c for c in combos if c not in UNSEEN]
    table = _table(tmp_path / "classes.csv", [[f"{c}_{s}", *[int(c == k) for k in COLOURS],
                                               *[int(s == k) for k in SHAPES]] for c, s in combos],
                   ("class", *COLOURS, *SHAPES))
    x, y = coloured_shapes(n, seen, 24, seed=0)
    np.savez(tmp_path / "seen.npz", x=x, y=y, class_names=np.array([f"{c}_{s}" for c, s in seen]))
    xe, ye = coloured_shapes(90, combos, 24, seed=1)
    np.savez(tmp_path / "eval.npz", x=xe, y=ye, class_names=np.array([f"{c}_{s}" for c, s in combos]))
    return table, [f"{c}_{s}" for c, s in combos]


def test_fit_with_attributes_outputs_every_class_of_the_table(tmp_path):
    from tltf.training import FitConfig, fit

    table, names = _shapes_task(tmp_path, 180)
    config = FitConfig(data=str(tmp_path / "seen.npz"), backbone="cnn_small", weights="none", image_size=24,
                       epochs=4, attributes=str(table), eval_data=str(tmp_path / "eval.npz"), refit="off",
                       out=str(tmp_path / "run"), tensorboard=False, learning_rate=3e-3)
    metrics = fit(config, verbose=0)
    zs = metrics["zero_shot"]
    assert metrics["classes"] == names and "attributes" in metrics["methods"]
    assert zs["unseen"] == ["red_circle", "green_square", "blue_triangle"] and len(zs["seen"]) == 6
    # the three unseen pairs differ in colour: among themselves the colour attributes alone tell them apart
    assert zs["eval"]["unseen_only_accuracy"] > 0.6 and zs["eval"]["num_unseen"] == 30
    model = keras.saving.load_model(tmp_path / "run" / "model.keras")
    head = model.get_layer("head")
    assert head.class_names == names and float(head.gamma) == pytest.approx(zs["gamma"], abs=1e-5)
    assert model.output_shape == (None, 9)
    data = np.load(tmp_path / "eval.npz")
    assert np.allclose(np.asarray(model.predict_on_batch(data["x"][:8].astype(np.float32))).sum(axis=1), 1, atol=1e-5)
    # bad input is one line
    with pytest.raises(TltfError, match="every class of the table has images"):
        np.savez(tmp_path / "all.npz", x=data["x"], y=data["y"], class_names=np.array(names))
        fit(FitConfig(**{**config.__dict__, "data": str(tmp_path / "all.npz"), "out": str(tmp_path / "r2")}),
            verbose=0)
    with pytest.raises(TltfError, match="not with --stage prototypes"):
        fit(FitConfig(**{**config.__dict__, "stage": "prototypes", "out": str(tmp_path / "r3")}), verbose=0)
