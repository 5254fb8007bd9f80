"""Data sources -> tf.data: folders, npz, TFDS (mocked), built-in; splits; bad input."""

import numpy as np
import pytest
import tensorflow as tf

from tltf.data import Augment, load_data, load_source, make_pipeline, stratified_split
from tltf.errors import TltfError


def test_folder_source_pipeline_shapes_and_stratified_val(image_folder):
    data = load_data(str(image_folder), val_split=0.25, seed=0)
    assert data.class_names == ["circle", "square", "triangle"]
    assert len(data.train) == 27 and len(data.val) == 9
    assert np.bincount(data.val.selected_labels).tolist() == [3, 3, 3]
    x, y = next(iter(make_pipeline(data.train, (48, 48), 8, training=True, augment=Augment.parse("flip,crop"))))
    assert x.shape == (8, 48, 48, 3) and x.dtype == tf.float32 and y.dtype == tf.int32
    assert 0.0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255.0 and float(tf.math.reduce_std(x)) > 5


def test_split_is_seeded_and_disjoint():
    labels = np.repeat(np.arange(4), 25)
    a_train, a_val = stratified_split(labels, 0.2, seed=3)
    b_train, b_val = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(a_val, b_val) and not set(a_train) & set(a_val)
    assert np.bincount(labels[a_val]).tolist() == [5, 5, 5, 5]
    assert not np.array_equal(a_val, stratified_split(labels, 0.2, seed=4)[1])


def test_folder_with_train_val_test_splits(tmp_path):
    from conftest import write_image_folder

    from tltf.data.builtin import SHAPES, shapes

    for split, seed in (("train", 0), ("val", 1), ("test", 2)):
        write_image_folder(tmp_path / split, *shapes(9, size=32, seed=seed), SHAPES)
    data = load_data(str(tmp_path))
    assert (len(data.train), len(data.val), len(data.test)) == (9, 9, 9)


def test_corrupt_image_is_skipped_with_a_warning_and_counted(image_folder, capsys):
    (image_folder / "circle" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        source = load_source(str(image_folder))
    assert len(source.train) == 36
    assert "broken.jpg" in capsys.readouterr().out


def test_npz_source_grey_float_images(tmp_path):
    x = np.random.default_rng(0).uniform(0, 1, (20, 16, 16)).astype("float32")
    y = np.arange(20) % 2
    np.savez(tmp_path / "d.npz", x=x, y=y, class_names=np.array(["no", "yes"]))
    data = load_data(str(tmp_path / "d.npz"), val_split=0.2)
    assert data.class_names == ["no", "yes"]
    images, labels = next(iter(make_pipeline(data.train, (16, 16), 4)))
    assert images.shape == (4, 16, 16, 3)
    np.testing.assert_allclose(images[..., 0], images[..., 2])  # grey -> RGB
    first = data.train.indices[0]
    np.testing.assert_allclose(images[0, ..., 0].numpy(), np.round(x[first] * 255), atol=1.0)


def test_tfds_source_under_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=24):
        data = load_data("tfds:mnist", val_split=0.25, seed=0)
        assert data.class_names[:3] == ["0", "1", "2"] and len(data.class_names) == 10
        # mock_data serves every split name asked for, so validation and test both exist here
        assert data.test is not None and len(data.train) == 24 and len(data.val) == 24
        x, y = next(iter(make_pipeline(data.train, (32, 32), 6)))
        assert x.shape == (6, 32, 32, 3) and y.shape == (6,)
        sliced = load_data("tfds:mnist:train[:12]", val_split=0.25)
        # an explicit split spec trains on it alone and carves validation from it (mock data ignores slicing)
        assert sliced.test is None and 0 < len(sliced.val) < len(sliced.train)
        assert not set(sliced.val.indices) & set(sliced.train.indices)


@pytest.mark.parametrize("make, message", [
    (lambda p: p.mkdir(), "no images found"),
    (lambda p: (p / "only").mkdir(parents=True) or _png(p / "only" / "a.png"), "single class"),
    (lambda p: None, "no such file or folder"),
])
def test_bad_folders_are_one_line_errors(tmp_path, make, message):
    target = tmp_path / "data"
    make(target)
    with pytest.raises(TltfError, match=message) as info:
        load_data(str(target))
    assert "\n" not in str(info.value) and str(target) in str(info.value)


def test_npz_without_arrays_is_named(tmp_path):
    np.savez(tmp_path / "bad.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(TltfError, match=r"bad.npz: expected arrays 'x' and 'y' \(found: images\)"):
        load_data(str(tmp_path / "bad.npz"))


def _png(path):
    path.write_bytes(tf.io.encode_png(np.zeros((8, 8, 3), np.uint8)).numpy())
