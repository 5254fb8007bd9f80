"""Hostile data: labels that are not class indices, non-finite pixels, object arrays, arrays too big for memory, a
TFDS dataset that is neither local nor downloadable -- each a one-line error naming the file and the array, before
anything is trained or written."""

import errno
import os
import zipfile

import numpy as np
import pytest
from conftest import cli

from tltf.data import load_data
from tltf.data.builtin import shapes
from tltf.errors import TltfError

FIT = ["--backbone", "cnn_small", "--weights", "none", "--stage", "scratch", "--image-size", "28", "--epochs", "1",
       "--batch-size", "16", "--augment", "none", "--refit", "off", "--quiet"]

X, Y = shapes(36, size=28, seed=0)  # 3 classes, 12 each


def _nonfinite():
    x = X.astype(np.float32) / 255.0
    x[0, 0, 0, 0] = np.nan
    x[1, :5, 0, 0] = np.inf
    x[7, 3, 3, :] = -np.inf
    x[7, 4, 4, :] = np.nan
    return x  # 12 bad values in images 0, 1 and 7


CASES = {
    "halves": (dict(x=X, y=Y + 0.5), f"y has 36 labels that are not integers (e.g. {Y[0] + 0.5:g}); labels must "
                                     "be class indices 0, 1, ..."),
    "nan_label": (dict(x=X, y=np.where(np.arange(36) == 3, np.nan, Y)),
                  "y has 1 label that is not an integer (e.g. nan); labels must be class indices 0, 1, ..."),
    "object_labels": (dict(x=X, y=np.array(list(Y), dtype=object)),
                      "array 'y' holds Python objects (dtype object); tltf reads only arrays of numbers (and strings "
                      "for class_names)"),
    "y_val_outside": (dict(x=X, y=Y, x_val=X[:6], y_val=np.array([0, 1, 2, 5, 1, 7])),
                      "y_val has 2 labels outside 0..2 (e.g. 5); there are 3 classes"),
    "y_test_negative": (dict(x=X, y=Y, x_test=X[:4], y_test=np.array([0, -1, 2, 1]), class_names=np.array(list("abc"))),
                        "y_test has 1 label outside 0..2 (e.g. -1); there are 3 classes"),
    "y_outside_names": (dict(x=X, y=Y, class_names=np.array(["a", "b"])),
                        "y has 12 labels outside 0..1 (e.g. 2); there are 2 classes"),
    "nonfinite": (dict(x=_nonfinite(), y=Y), "x has 12 non-finite pixel values (NaN or inf) in 3 images"),
    "nonfinite_val": (dict(x=X, y=Y, x_val=np.full((2, 28, 28), np.nan), y_val=np.array([0, 1])),
                      "x_val has 1568 non-finite pixel values (NaN or inf) in 2 images"),
    "string_labels": (dict(x=X, y=Y.astype(str)), "y must hold integer class labels, got dtype <U11"),
    "one_hot": (dict(x=X, y=np.eye(3)[Y]), "y has shape (36, 3); expected one integer class label per image, shape "
                                           "(N,) (one-hot labels? save y.argmax(1))"),
    "string_pixels": (dict(x=np.array([["a"] * 3] * 36), y=Y), "x must hold pixel values (numbers), got dtype <U1"),
    "x_val_alone": (dict(x=X, y=Y, x_val=X[:6]), "has 'x_val' but no 'y_val'"),
    "val_lengths": (dict(x=X, y=Y, x_val=X[:6], y_val=Y[:5]), "6 images but 5 labels (x_val, y_val)"),
    "absurd_label": (dict(x=X, y=np.where(np.arange(36) == 3, 10 ** 9, Y)),
                     "y has 1 label that is not a class index 0..99999 (e.g. 1000000000)"),
}


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_npz_is_one_line_naming_the_file_and_the_array(case, tmp_path):
    arrays, message = CASES[case]
    path = tmp_path / f"{case}.npz"
    np.savez(path, **arrays)
    with pytest.raises(TltfError) as e:
        load_data(str(path))
    assert str(e.value) == f"--data {path}: {message}"


@pytest.mark.parametrize("case", ["halves", "nan_label", "object_labels", "y_val_outside", "nonfinite"])
def test_fit_on_bad_npz_exits_2_and_writes_nothing(case, tmp_path):
    arrays, message = CASES[case]
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    out = tmp_path / "run"
    line = one_error_line(cli("fit", "--data", path, *FIT, "--out", out))
    assert line == f"error: --data {path}: {message}"
    assert not out.exists()  # the run folder it made for itself is gone again


def test_array_bigger_than_memory_is_refused_from_its_header(tmp_path):
    """A 12-byte array whose header claims 10^6 x 1000 x 1000 x 3 bytes: refused before anything is allocated."""
    path = tmp_path / "bomb.npz"
    np.savez(path, x=X, y=Y)
    header = {"descr": "|u1", "fortran_order": False, "shape": (10 ** 6, 1000, 1000, 3)}
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    with zipfile.ZipFile(path, "a") as zf:  # a second 'x' member would be ambiguous: rename y's twin
        zf.writestr("x_val.npy", buffer.getvalue() + b"\0" * 12)
        zf.writestr("y_val.npy", _npy(np.zeros(3, np.int64)))
    with pytest.raises(TltfError) as e:
        load_data(str(path))
    assert str(e.value).startswith(f"--data {path}: array 'x_val' (1000000, 1000, 1000, 3) uint8 would take 2794.0 GiB,"
                                   " more than the ")


def _npy(array) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_not_an_npz_archive(tmp_path):
    path = tmp_path / "single.npz"
    with open(path, "wb") as f:
        np.save(f, X)
    with pytest.raises(TltfError, match=r"single\.npz: not a \.npz archive \(a single \.npy array\?\)"):
        load_data(str(path))
    path.write_bytes(b"PK\3\4 truncated zip")
    with pytest.raises(TltfError, match=r"single\.npz: not a readable \.npz \(BadZipFile\)$"):
        load_data(str(path))


def test_good_arrays_load_as_before(tmp_path):
    """Whole-number float labels, floats in [0, 1] and in [0, 255], grey images: accepted, converted as before."""
    grey = X[..., 0]
    for x, expect in ((grey / 255.0, grey), (grey.astype(np.float64), grey), (X, X)):
        np.savez(tmp_path / "ok.npz", x=x, y=Y.astype(np.float32), x_val=x[:6], y_val=Y[:6])
        data = load_data(str(tmp_path / "ok.npz"))
        images = np.stack([image for image, _ in data.train.dataset().as_numpy_iterator()])
        want = expect if expect.ndim == 4 else np.repeat(expect[..., None], 3, axis=-1)
        assert np.array_equal(images, want) and data.class_names == ["0", "1", "2"]
        assert data.train.labels.dtype == np.int32 and len(data.val) == 6


def test_tfds_dataset_neither_local_nor_downloadable(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(self, *args, **kwargs):  # what a machine without a network gets, whatever the missing piece
        raise OSError(errno.ENETUNREACH, os.strerror(errno.ENETUNREACH))

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    out = tmp_path / "run"
    line = one_error_line(cli("fit", "--data", "tfds:mnist", "--data-dir", tmp_path / "tfds", *FIT, "--out", out))
    assert line == (f"error: --data tfds:mnist: not in the local TFDS data folder ({tmp_path / 'tfds'}) and could "
                    "not be downloaded ([Errno 101] Network is unreachable); prepare it where there is a network "
                    "(tfds build mnist) and pass its folder with --data-dir")
    assert not out.exists()
