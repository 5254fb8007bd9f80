"""A CSV manifest as a data source: file column, label columns, an optional split column."""

import csv

import numpy as np
import pytest

from tltf.data import load_data, load_source
from tltf.errors import TltfError


def _manifest(tmp_path, rows, header=("file", "shape", "big", "split"), name="labels.csv"):
    path = tmp_path / name
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture
def images(tmp_path):
    import tensorflow as tf

    from tltf.data.builtin import SHAPES, shapes

    x, y = shapes(30, size=32, seed=5)
    (tmp_path / "img").mkdir()
    rows = []
    for i, (image, label) in enumerate(zip(x, y)):
        name = f"img/{i:03d}.png"
        (tmp_path / name).write_bytes(tf.io.encode_png(image).numpy())
        rows.append([name, SHAPES[int(label)], "yes" if i % 2 else "no", "test" if i >= 24 else "train"])
    return tmp_path, rows, y


def test_manifest_reads_the_chosen_column_and_its_splits(images):
    root, rows, y = images
    path = _manifest(root, rows)
    source = load_source(f"{path}:shape")
    assert source.class_names == ["circle", "square", "triangle"] and len(source.train) == 24 and len(source.test) == 6
    assert np.array_equal(source.train.labels, y[:24]) and source.train.files[0] == str(root / "img" / "000.png")
    images_read = [np.asarray(image) for image, _ in source.train.dataset().take(2)]
    assert images_read[0].shape == (32, 32, 3)
    other = load_data(f"{path}:big", 0.25, seed=0)
    assert other.class_names == ["no", "yes"] and len(other.train) + len(other.val) == 24


def test_manifest_problems_are_one_line(images):
    root, rows, _ = images
    cases = {
        r"2 label columns \(shape, big\); choose one as .*labels.csv:COLUMN": (_manifest(root, rows), ""),
        "no label column 'colour'": (_manifest(root, rows), ":colour"),
        "needs a 'file' column": (_manifest(root, [r[1:] for r in rows], ("shape", "big", "split"), "a.csv"), ""),
        "row 3: .*missing.png does not exist": (_manifest(root, [rows[0], ["img/missing.png", *rows[1][1:]]],
                                                          name="b.csv"), ":shape"),
        "row 2: split 'holdout'": (_manifest(root, [[*rows[0][:3], "holdout"]], name="c.csv"), ":shape"),
        "row 2 has 3 cells, the header 4": (_manifest(root, [rows[0][:3]], name="d.csv"), ""),
    }
    for problem, (path, column) in cases.items():
        with pytest.raises(TltfError, match=problem):
            load_source(f"{path}{column}" if column else str(path))
    with pytest.raises(TltfError, match="no such file"):
        load_source(str(root / "nope.csv"))


def test_fit_trains_from_a_manifest(images):
    from tltf.training import FitConfig, fit

    root, rows, _ = images
    path = _manifest(root, rows)
    metrics = fit(FitConfig(data=f"{path}:shape", backbone="cnn_small", weights="none", image_size=32, epochs=1,
                            out=str(root / "run"), tensorboard=False, refit="off"), verbose=0)
    assert metrics["classes"] == ["circle", "square", "triangle"] and metrics["num_train"] + metrics["num_val"] == 24
    assert metrics["test_accuracy"] is not None
