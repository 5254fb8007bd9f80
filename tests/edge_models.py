"""Small trained classifiers for the edge-runtime tests (issue 26): MobileNetV2, MobileNetV3-Small and
EfficientNet-B0 at 32 px that reach test accuracy >= 0.9 in seconds, so that the runtimes are compared on files
whose answers mean something (a random network's near-tied answers flip on rounding alone).

No ImageNet weights are needed: the data, :func:`tinted`, is textured images (tltf's synthetic gratings, shapes and
noise) under one of three colour casts, the class; the backbone keeps random weights with BatchNorm statistics set
from the training images (:func:`tltf.export.parity.spread_random_model`) and the classifier's dense layer is fitted
on its pooled features (a linear probe, the head tltf's ``feature`` stage trains). Measured: test accuracy 1.0 for
all three on 150 held-out images.
"""

from __future__ import annotations

import numpy as np

SIZE = 32
CLASSES = ["red", "green", "blue"]
TINTS = np.array([[230, 50, 40], [40, 200, 60], [50, 70, 230]], np.float32)


def tinted(n: int, size: int = SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` textured images (float32 NHWC 0..255) under the colour cast of their label, and the labels."""
    from tltf.export.parity import synthetic_images

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    texture = synthetic_images(n, (size, size), seed=seed + 100)
    cast = TINTS[labels] + rng.normal(0, 15, (n, 3))
    images = 0.1 * texture + 0.9 * cast[:, None, None, :]
    return np.clip(images, 0, 255).astype(np.float32), labels.astype(np.int64)


def trained_classifier(backbone: str, size: int = SIZE, seed: int = 0):
    """``(model, test accuracy)``: a tltf classifier on :func:`tinted` data, its head fitted on the backbone's
    pooled features (logistic regression)."""
    import keras
    from sklearn.linear_model import LogisticRegression

    from tltf.export.parity import spread_random_model
    from tltf.models.classifier import backbone_of, build_classifier, head_of

    x, y = tinted(300, size, seed=seed)
    xt, yt = tinted(150, size, seed=seed + 1)
    keras.utils.set_random_seed(seed)
    model = build_classifier(backbone, CLASSES, image_size=size, weights="none")
    spread_random_model(model, images=x[:64], seed=seed)
    net, pre = backbone_of(model), model.get_layer("preprocess")

    def pooled(images):
        out = np.concatenate([np.asarray(net(pre(images[i:i + 100]), training=False)) for i in
                              range(0, len(images), 100)])
        return out.mean(axis=(1, 2)) if out.ndim == 4 else out

    features = pooled(x)
    mean, std = features.mean(axis=0), features.std(axis=0) + 1e-6
    probe = LogisticRegression(C=1.0, max_iter=3000).fit((features - mean) / std, y)
    kernel = probe.coef_.T / std[:, None]
    bias = probe.intercept_ - (mean / std) @ probe.coef_.T
    head_of(model).dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    probabilities = np.asarray(model.predict(xt, verbose=0))
    return model, float((probabilities.argmax(axis=1) == yt).mean())
