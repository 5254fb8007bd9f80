"""Augmented views for the LP head (``--lp-views``): the logistic regression also sees each training image under a
few random augmentations (the run's own ``--augment``), as features of the frozen backbone.

With 10 images per class a linear probe has little to go on; views of the same image could tell it which
feature changes do not change the class. ``auto`` uses views only when they lower the held-out log-loss of
stratified, seeded folds split **by image** (no view of a held-out image trains its fold's probe), scored on the
held-out originals.

**Off by default, from measurements.** ``benchmarks/small_data.py`` (MobileNetV2 multi-level features, 96 px, 3
seeds, tltf's default run otherwise), test accuracy with ``--lp-views auto`` vs off: MNIST 10/class 0.880 vs 0.877,
UCI digits 10/class 0.918 vs 0.926, LFW 0.990 vs 0.990, shapes 10/class 0.887 vs 0.902. The folds chose views on 7
of the 12 runs (none on LFW). On shapes the chosen views lowered test accuracy (2 seeds: -2.0, -2.7 points; the
run's crops, 60-100 % of the image, change a shape's size). On UCI digits the views were chosen on every seed, and
the refit's hold-out then chose fine-tuning epochs on two of them (1 and 8), which cost more than the views gained.
In a side experiment (logistic regression at fixed C on 8 views, no fine-tuning) views gained about a point on the
digits (MNIST 0.893 vs 0.882, UCI 0.936 vs 0.927) and lost on shapes and LFW (0.898 vs 0.904, 0.993 vs 0.997).
With ``--stage feature`` (the views, no fine-tuning after them): MNIST 0.880, UCI 0.931, LFW 0.997, shapes 0.887
(vs 0.877, 0.926, 0.997, 0.902 without views). ``--lp-views N`` or ``auto`` remain for data whose augmentation does
preserve the class.

Each view is one more copy of the data in scikit-learn's summed loss, so ``C`` is divided by ``views + 1``: the
regularisation per image stays what cross-validation chose on the originals. The views are not cached (they are
random); the test and exported models never see them (the head is a plain ``Dense`` layer).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np

from tltf.errors import TltfError

VIEWS = 8  # views per image for ``auto``
VIEWS_WHY = ("off: on the small-data suite (benchmarks/small_data.py, 3 seeds) augmented views for the LP head "
             "moved test accuracy by +0.3 (MNIST 10/class), -0.8 (UCI digits), 0 (LFW) and -1.5 points (shapes)")
AUTO_BELOW = 50  # ``auto`` considers views below this many images in the smallest class (the refit's threshold)


def parse_views(value) -> int | str:
    """``"auto"``, or the number of views (0: off)."""
    text = str(value).strip().lower()
    if text in ("auto",):
        return "auto"
    if text in ("off", "none", "false"):
        return 0
    try:
        views = int(text)
    except ValueError:
        views = -1
    if views < 0 or views > 64:
        raise TltfError(f"--lp-views {value}: choose auto, off or a number of views from 0 to 64")
    return views


def view_features(model: keras.Model, split, augment, views: int, batch_size: int = 32, seed: int = 0,
                  extractor: keras.Model | None = None) -> np.ndarray:
    """``(views, N, C)`` features of ``views`` random augmentations of each image of ``split``, in the split's
    order (that of :func:`tltf.strategies.features.split_features`)."""
    import tensorflow as tf

    from tltf.data import make_pipeline
    from tltf.strategies.features import feature_extractor

    extractor = extractor or feature_extractor(model)
    pipeline = make_pipeline(split, tuple(model.input_shape[1:3]), batch_size, cache=False)
    out = [[] for _ in range(views)]
    done = 0
    for x, _ in pipeline:
        index = tf.range(done, done + tf.shape(x)[0], dtype=tf.int64)
        done += int(x.shape[0])
        for k in range(views):  # one stateless seed per image and view: the same views for the same seed
            seeds = tf.stack([tf.fill(tf.shape(index), tf.constant(seed, tf.int64)), index * 1024 + k], axis=1)
            batch = tf.map_fn(lambda item: augment(item[0], item[1]), (x, seeds), fn_output_signature=tf.float32)
            out[k].append(np.asarray(extractor.predict_on_batch(batch), np.float32))
    return np.stack([np.concatenate(parts) for parts in out])


def stack(x: np.ndarray, y: np.ndarray, views: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The originals followed by every view, and their labels."""
    if views is None or len(views) == 0:
        return x, y
    return np.concatenate([x, *views]), np.tile(y, len(views) + 1)


def views_help(x: np.ndarray, y: np.ndarray, views: np.ndarray, c: float, folds: int = 5,
               seed: int = 0) -> tuple[bool, dict]:
    """Whether the views lower the held-out log-loss (stratified, seeded folds by image, at most ``folds``; scored
    on the held-out originals), with the folds' mean log-loss and accuracy with and without them."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    from tltf.strategies.features import feature_scale
    from tltf.training.refit import smallest_class

    folds = min(folds, smallest_class(y))
    if folds < 2:
        return False, {"reason": "fewer than 2 images in a class: no folds to decide on"}
    scores = {"without": [], "with": []}
    for train, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        for arm in scores:
            fx, fy = stack(x[train], y[train], views[:, train] if arm == "with" else None)
            mean, std = feature_scale(fx)
            effective = c / (len(fx) / len(train))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe = LogisticRegression(C=effective, max_iter=2000).fit((fx - mean) / std, fy)
            p = probe.predict_proba((x[held] - mean) / std)
            scores[arm].append((log_loss(y[held], p, labels=probe.classes_),
                                float((probe.classes_[p.argmax(axis=1)] == y[held]).mean())))
    summary = {arm: {"log_loss": float(np.mean([s[0] for s in found])),
                     "accuracy": float(np.mean([s[1] for s in found]))} for arm, found in scores.items()}
    return summary["with"]["log_loss"] < summary["without"]["log_loss"], {"folds": folds, **summary}
