"""Exported files on the runtimes edge developers ship besides onnxruntime (issue 26): for now OpenCV's DNN module.

OpenCV computes ``Mul(y, HardSigmoid(s))`` as ``HardSwish(s)``, dropping ``y``: tltf used to write MobileNetV3's
squeeze-and-excite gates in exactly that form, and OpenCV then agreed with onnxruntime on 3 of 8 images. The
export keeps the gates as ``Add -> Clip -> Mul`` (:func:`tltf.export.graph.fuse_hard_activations`).
"""

from __future__ import annotations

import numpy as np


def _mobilenet_v3_with_spread(size: int = 96):
    """A MobileNetV3-Small classifier whose outputs differ from image to image (random weights alone give one
    answer for every image: BatchNorm statistics set from the images fix that), and those images."""
    import keras
    import tensorflow as tf

    from tltf.models.classifier import build_classifier
    from tltf.staging.batchnorm import recompute_batchnorm

    keras.utils.set_random_seed(0)
    model = build_classifier("mobilenet_v3_small", list("abcd"), image_size=size, weights="none", train_bn=True)
    rng = np.random.default_rng(0)
    images = np.clip(rng.uniform(0, 255, (16, 1, 1, 3)) + rng.normal(0, 40, (16, size, size, 3)), 0, 255)
    images = images.astype(np.float32)
    recompute_batchnorm(model, tf.data.Dataset.from_tensor_slices(images).batch(8))
    return model, images


def test_opencv_dnn_runs_the_mobilenet_v3_export_like_onnxruntime(tmp_path):
    import cv2  # opencv-python-headless, in the dev extra
    import onnx
    import onnxruntime as ort

    from tltf.export.onnx import convert

    model, images = _mobilenet_v3_with_spread()
    keras_out = np.asarray(model(images, training=False))
    assert keras_out.std(axis=0).max() > 0.02 and len(set(keras_out.argmax(axis=1))) > 1  # answers that differ
    proto = convert(model)
    onnx.save(proto, str(tmp_path / "mnv3.onnx"))
    session = ort.InferenceSession(str(tmp_path / "mnv3.onnx"), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"pixels": images})[0]
    net = cv2.dnn.readNetFromONNX(str(tmp_path / "mnv3.onnx"))
    net.setInput(images)
    theirs = net.forward()
    assert theirs.shape == reference.shape
    assert (theirs.argmax(axis=1) == reference.argmax(axis=1)).all()
    assert np.abs(theirs - reference).max() < 1e-4
    assert sum(n.op_type == "HardSigmoid" for n in proto.graph.node) == 0  # the form OpenCV gets wrong
