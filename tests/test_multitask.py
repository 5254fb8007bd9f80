"""Multitask learning (--tasks): joint labels from a manifest, the objective, and MNIST digit + parity end to end
(both heads learn; the ONNX export has one output per task, matching Keras; predict, evaluate and serve see every
task)."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import cli
from tltf.data import load_source, offline
from tltf.errors import TltfError


def _manifest(root, images, columns: dict, splits=None):
    root.mkdir(parents=True, exist_ok=True)
    names = list(columns)
    lines = [",".join(["file", *names, *(["split"] if splits is not None else [])])]
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"{i}.png")
        cells = [f"{i}.png", *(str(columns[n][i]) for n in names), *([splits[i]] if splits is not None else [])]
        lines.append(",".join(cells))
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root / "labels.csv"


def test_manifest_reads_several_label_columns_as_a_joint_label(tmp_path):
    images = np.zeros((6, 8, 8, 3), np.uint8)
    path = _manifest(tmp_path / "m", images, {"digit": [0, 1, 2, 3, 3, 1], "parity": ["even", "odd", "even", "odd",
                                                                                     "odd", "odd"],
                                              "colour": list("rgbrgb")})
    source = load_source(f"{path}:digit+parity")
    tasks = source.tasks
    assert tasks.names == ["digit", "parity"] and tasks.classes == [["0", "1", "2", "3"], ["even", "odd"]]
    assert source.class_names == ["0|even", "1|odd", "2|even", "3|odd"]
    per_task = tasks.split(source.train.labels)  # each row's own two labels, back from the joint one
    assert per_task.tolist() == [[0, 0], [1, 1], [2, 0], [3, 1], [3, 1], [1, 1]]
    assert load_source(f"{path}:colour").tasks is None  # one column: a plain source
    with pytest.raises(TltfError, match="no label column 'size'"):
        load_source(f"{path}:digit+size")
    with pytest.raises(TltfError, match="3 label columns"):
        load_source(str(path))
    single = _manifest(tmp_path / "s", images, {"a": [0, 1, 0, 1, 0, 1], "b": ["x"] * 6})
    with pytest.raises(TltfError, match="column b has a single class"):
        load_source(f"{single}:a+b")


def test_objective_is_the_weighted_mean_of_the_tasks_cross_entropies():
    from tltf.multitask.objective import objective, parse_weights

    table = np.array([[0, 0], [1, 1], [2, 0]], np.int32)  # joint class -> (task a label, task b label)
    segments = [("a", 0, 3, ["0", "1", "2"]), ("b", 3, 5, ["x", "y"])]
    rng = np.random.default_rng(0)
    pa, pb = rng.dirichlet(np.ones(3), 8), rng.dirichlet(np.ones(2), 8)
    y = rng.integers(0, 3, 8)
    compiled = objective(table, segments, parse_weights("3,1", ["a", "b"]))
    loss = float(keras.ops.mean(compiled["loss"](y, np.concatenate([pa, pb], axis=1).astype(np.float32))))
    la, lb = table[y, 0], table[y, 1]
    ce_a = -np.log(pa[np.arange(8), la]).mean()
    ce_b = -np.log(pb[np.arange(8), lb]).mean()
    assert loss == pytest.approx(0.75 * ce_a + 0.25 * ce_b, rel=1e-4)
    for problem, text in [("2 tasks", "1"), ("finite", "1,nan"), ("not all 0", "0,0"), ("numbers", "1,x")]:
        with pytest.raises(TltfError, match=problem):
            parse_weights(text, ["a", "b"])


def test_tasks_need_a_manifest_and_a_plain_head(tmp_path):
    path = _manifest(tmp_path / "m", np.zeros((4, 8, 8, 3), np.uint8), {"a": [0, 1, 0, 1], "b": [1, 1, 0, 0]})
    for args, problem in [(["--data", tmp_path, "--tasks", "a,b"], "must be a CSV manifest"),
                          (["--data", f"{path}:a", "--tasks", "a,b"], "as the CSV file alone"),
                          (["--data", path, "--tasks", "a"], "two or more label columns"),
                          (["--data", path, "--tasks", "a,b", "--stage", "prototypes"], "not with --stage prototypes"),
                          (["--data", path, "--tasks", "a,b", "--lp-init", "on"], "multitask sets the head")]:
        result = cli("fit", *args, "--backbone", "cnn_small", "--weights", "none", "--out", tmp_path / "run")
        assert result.exit_code == 2 and problem in result.output, (args, result.output)
        assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def parity_manifest(tmp_path_factory):
    """1,200 MNIST digits (1,000 train, 200 test) with their digit and parity as two label columns."""
    x, y = offline.mnist_5k()
    pick = np.random.default_rng(0).permutation(len(y))[:1200]
    x, y = x[pick], y[pick]
    images = np.repeat(x[..., None], 3, axis=-1)
    parity = np.where(y % 2 == 0, "even", "odd")
    splits = ["train"] * 1000 + ["test"] * 200
    return _manifest(tmp_path_factory.mktemp("mnist_tasks"), images, {"digit": y, "parity": parity}, splits)


@pytest.fixture(scope="module")
def parity_run(parity_manifest, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "mt"
    result = cli("fit", "--data", parity_manifest, "--tasks", "digit,parity", "--backbone", "cnn_small",
                 "--weights", "none", "--image-size", 28, "--epochs", 5, "--refit", "off", "--augment", "none",
                 "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.mark.network
def test_mnist_digit_and_parity_heads_both_learn(parity_run):
    out, printed = parity_run
    metrics = json.loads((out / "metrics.json").read_text())
    tasks = metrics["tasks"]
    assert list(tasks) == ["digit", "parity"] and tasks["parity"]["classes"] == ["even", "odd"]
    # measured 0.91 / 0.95 (digit, chance 0.1) and 0.96 / 0.97 (parity, chance 0.5)
    assert tasks["digit"]["val_accuracy"] > 0.8 and tasks["digit"]["test_accuracy"] > 0.8
    assert tasks["parity"]["val_accuracy"] > 0.85 and tasks["parity"]["test_accuracy"] > 0.85
    test = metrics["test"]
    assert test["accuracy"] == pytest.approx((tasks["digit"]["test_accuracy"] + tasks["parity"]["test_accuracy"]) / 2)
    assert metrics["methods"] == ["supervised", "multitask"]
    history = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert {"val_digit_accuracy", "val_parity_accuracy", "val_accuracy"} <= set(history)
    assert "task digit: val_accuracy=" in printed and "task parity: val_accuracy=" in printed


@pytest.mark.network
def test_mnist_tasks_export_one_onnx_output_each_matching_keras(parity_run, parity_manifest, tmp_path):
    import onnx

    from tltf.export.onnx import export_onnx
    from tltf.runtime.onnx_model import OnnxModel
    from tltf.models.loading import load_model

    out, _ = parity_run
    onnx_path = tmp_path / "mt.onnx"
    report = export_onnx(out / "model.keras", onnx_path)
    proto = onnx.load(str(onnx_path))
    assert [o.name for o in proto.graph.output] == ["digit", "parity"]
    assert report["tasks"]["parity"] == ["even", "odd"] and report["max_abs_diff"] < 1e-4
    model = load_model(out / "model.keras")
    images = np.asarray([np.asarray(Image.open(parity_manifest.parent / f"{i}.png").convert("RGB"))
                         for i in range(1000, 1040)], np.float32)  # test images
    keras_out = np.asarray(model(images, training=False))
    onnx_model = OnnxModel(onnx_path)
    digit, parity = onnx_model.session.run(["digit", "parity"], {"pixels": images})
    assert digit.shape == (40, 10) and parity.shape == (40, 2)
    assert np.abs(digit - keras_out[:, :10]).max() < 1e-4 and np.abs(parity - keras_out[:, 10:]).max() < 1e-4

    from tltf.serve.models import ServedModel

    served = ServedModel(onnx_path)
    assert served.output_classes == {"digit": [str(d) for d in range(10)], "parity": ["even", "odd"]}


@pytest.mark.network
def test_predict_and_evaluate_report_every_task(parity_run, parity_manifest):
    out, _ = parity_run
    image = parity_manifest.parent / "1000.png"
    result = cli("predict", out / "model.keras", image, "--top", 1, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert set(row["tasks"]) == {"digit", "parity"}
    digit, parity = row["tasks"]["digit"][0]["label"], row["tasks"]["parity"][0]["label"]
    assert digit in [str(d) for d in range(10)] and parity in ("even", "odd")
    table = cli("predict", out / "model.keras", image)
    assert "digit" in table.output and "parity" in table.output
    result = cli("evaluate", out / "model.keras", "--data", parity_manifest, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert scores["split"] == "test" and scores["n"] == 200
    assert scores["tasks"]["parity"]["accuracy"] > 0.85
    assert scores["all_correct"] <= scores["tasks"]["digit"]["accuracy"]


def test_tasks_train_on_cached_features_with_a_frozen_backbone(tmp_path):
    """--stage feature: the heads train on cached features (the feature-cache trainer takes the multitask
    objective); colour, which pooled random-convolution features carry, is learnt."""
    from tltf.data.builtin import COLOURS, SHAPES, coloured_shapes
    from tltf.training import FitConfig, fit

    combos = [(c, s) for c in COLOURS for s in SHAPES]
    x, y = coloured_shapes(270, combos, 32, seed=0)
    path = _manifest(tmp_path / "m", x, {"colour": [combos[i][0] for i in y], "shape": [combos[i][1] for i in y]},
                     ["train"] * 200 + ["test"] * 70)
    metrics = fit(FitConfig(data=str(path), tasks="shape,colour", backbone="cnn_small", weights="none",
                            image_size=32, stage="feature", epochs=15, learning_rate=1e-2, refit="off", train_bn=False,
                            out=str(tmp_path / "run"), tensorboard=False), verbose=0)
    assert metrics["feature_cache"]["used"] and list(metrics["tasks"]) == ["shape", "colour"]
    assert metrics["tasks"]["colour"]["test_accuracy"] > 0.8  # chance 1/3
    assert metrics["task_columns"] == {"shape": [0, 3], "colour": [3, 6]}


def test_tasks_refit_on_every_image_and_keep_the_holdouts_per_task_figures(tmp_path):
    from tltf.data.builtin import COLOURS, SHAPES, coloured_shapes

    combos = [(c, s) for c in COLOURS for s in SHAPES]
    x, y = coloured_shapes(90, combos, 32, seed=1)
    path = _manifest(tmp_path / "m", x, {"colour": [combos[i][0] for i in y], "shape": [combos[i][1] for i in y]})
    result = cli("fit", "--data", path, "--tasks", "colour,shape", "--backbone", "cnn_small", "--weights", "none",
                 "--image-size", 32, "--epochs", 2, "--refit", "on", "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_train"] == 90 and metrics["refit"]["holdout_num_train"] == 72  # the refit saw every image
    held = metrics["refit"]["holdout_val_metrics"]
    assert {"val_colour_accuracy", "val_shape_accuracy"} <= set(held)
    assert f"task colour: val_accuracy={held['val_colour_accuracy']:.3f}" in result.output
