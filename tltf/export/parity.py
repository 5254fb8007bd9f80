"""The parity gate: the exported file must answer like the Keras model before it is allowed to exist.

onnxruntime runs the candidate file on the same images as Keras. fp32 passes when the largest absolute difference
of any probability is at most 1e-4 of the Keras outputs' range; fp16 and int8, which change the numbers on purpose,
pass on top-1 agreement (>= 99 % and >= 97 % of the images) -- the defaults of :mod:`tltf.export.precision`.
Without real images the check uses :func:`synthetic_images` -- gratings, gradients, shapes and texture rather than
noise, so that even a network with random weights gives outputs that vary from image to image (``output_std`` in
the result says by how much).

A file exported with a ``features`` output (``tltf export --features``) has it compared with Keras' feature
extractor on the same images: in fp32 it is held to the same tolerance, as a fraction of the features' range
(measured: 7e-7 on cnn_small, 1e-5 on a random mobilenet_v2); fp16 and int8 carry it ungated, with its
difference in the report (cnn_small: 7e-4 of the range in fp16, 1.4e-2 in int8, cosine >= 0.9997).

For tests and benchmarks on ``weights="none"`` models, :func:`spread_random_model` makes the outputs of a random
network vary between images at all. Such networks stay chaotic (a 1e-6 change of the input moves their
probabilities by ~1e-4), so fp32 differences of 1e-5..1e-4 and poor int8 agreement are expected from them; a
trained network (torchvision's MobileNetV2, measured) agrees to ~2e-6 in fp32 and 100 % in int8.

>>> images = synthetic_images(16, (96, 96))
>>> images.shape, images.dtype, float(images.min()) >= 0.0, float(images.max()) <= 255.0
((16, 96, 96, 3), dtype('float32'), True, True)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tltf.errors import TltfError, first_line
from tltf.export import precision as precisions
from tltf.export.precision import DEFAULT, MAX_DIFF

#: The default gate of each precision (:data:`tltf.export.precision.PRECISIONS`): for a --max-diff gate (fp32) the
#: largest max |onnxruntime - keras| / (max - min of the Keras outputs), for --min-agreement (fp16, int8) the
#: smallest top-1 agreement.
THRESHOLDS = {p.name: p.threshold for p in precisions.PRECISIONS}
VAR_FLOOR = 0.5  # spread_random_model: moving variance >= VAR_FLOOR x the layer's median variance


def synthetic_images(n: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """``n`` structured RGB images, float32 ``(n, h, w, 3)`` in ``[0, 255]``, reproducible from ``seed``.

    Each mixes a coloured sinusoidal grating (random orientation, frequency, phase), a colour gradient, a few
    filled discs and rectangles, and a little texture noise: natural-ish statistics at every scale.
    """
    h, w = int(size[0]), int(size[1])
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= max(h - 1, 1)
    xx /= max(w - 1, 1)
    out = np.empty((n, h, w, 3), np.float32)
    for i in range(n):
        angle = rng.uniform(0, np.pi)
        freq = rng.uniform(1.0, 12.0)
        phase = rng.uniform(0, 2 * np.pi)
        grating = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        img = grating[..., None] * c1 + (1 - grating[..., None]) * c2
        g_angle = rng.uniform(0, 2 * np.pi)
        ramp = (np.cos(g_angle) * xx + np.sin(g_angle) * yy)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        img = 0.6 * img + 0.4 * ramp[..., None] * rng.uniform(0, 255, 3)
        for _ in range(int(rng.integers(1, 5))):
            colour = rng.uniform(0, 255, 3)
            cy, cx = rng.uniform(0, 1, 2)
            if rng.random() < 0.5:
                r = rng.uniform(0.05, 0.3)
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
            else:
                dy, dx = rng.uniform(0.05, 0.35, 2)
                mask = (np.abs(yy - cy) < dy) & (np.abs(xx - cx) < dx)
            img[mask] = colour
        img += rng.normal(0, rng.uniform(2, 20), img.shape)
        out[i] = np.clip(img, 0, 255)
    return out


def keras_probabilities(model, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``(N, num_classes)`` probabilities of a Keras classifier, in inference mode."""
    from tltf.runtime.outputs import class_probabilities

    parts = [np.asarray(model(images[i:i + batch_size], training=False))
             for i in range(0, len(images), batch_size)]
    return class_probabilities(np.concatenate(parts, axis=0))


def keras_features(extractor, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """``(N, D)`` float32 pooled features of a Keras feature extractor
    (:func:`tltf.export.onnx.features_model`), in inference mode."""
    parts = [np.asarray(extractor(images[i:i + batch_size], training=False), np.float32)
             for i in range(0, len(images), batch_size)]
    return np.concatenate(parts, axis=0)


def compare(onnx_path: str | Path, keras_probs: np.ndarray, images: np.ndarray, precision: str = DEFAULT,
            batch_size: int = 32, threshold: float | None = None, segments=(),
            keras_feats: np.ndarray | None = None) -> dict:
    """Run ``onnx_path`` in onnxruntime (CPU) on ``images`` and compare with ``keras_probs`` (``segments``: the
    columns of each task of a multitask model, see :func:`measure`); with ``keras_feats`` also the file's
    features output with them (``features`` in the result, :func:`measure_features`)."""
    from tltf.runtime.onnx_model import OnnxModel

    try:
        model = OnnxModel(onnx_path, provider="cpu")
    except TltfError:
        raise
    except Exception as e:  # a file onnxruntime refuses is the export's failure, said in one line
        first = first_line(e)
        raise TltfError(f"{onnx_path}: onnxruntime cannot load the exported graph ({first})") from None
    t0 = time.perf_counter()
    if keras_feats is None:
        onnx_probs = model.predict(images, batch_size=batch_size)
    else:
        onnx_feats, onnx_probs = model.features_and_probabilities(images, batch_size=batch_size)
    elapsed = time.perf_counter() - t0
    result = measure(onnx_probs, keras_probs, precision, threshold, segments)
    if keras_feats is not None:
        result["features"] = measure_features(onnx_feats, keras_feats)
    return result | {"onnxruntime_ms_per_image": round(1000 * elapsed / max(len(images), 1), 3)}


def measure_features(candidate: np.ndarray, reference: np.ndarray) -> dict:
    """Differences between two ``(N, D)`` feature arrays: ``max_abs_diff``, ``mean_abs_diff``, ``output_range``
    (max - min of the reference), ``relative_diff`` (max diff / range) and ``min_cosine`` (the least similar
    image's cosine similarity)."""
    a, b, diffs = _differences(candidate, reference, "features")
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, np.einsum("ij,ij->i", a, b) / np.maximum(norms, 1e-30), 1.0)
    return diffs | {"min_cosine": float(cosine.min()) if len(cosine) else 1.0}


def _differences(candidate, reference, what: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Both arrays as float64 (same shape, or a one-line error naming ``what``) and their ``max_abs_diff``,
    ``mean_abs_diff``, ``output_range`` (max - min of the reference) and ``relative_diff`` (max diff / range)."""
    a = np.asarray(candidate, np.float64)
    b = np.asarray(reference, np.float64)
    if a.shape != b.shape:
        raise TltfError(f"parity: onnxruntime {what} shape {a.shape} differs from Keras {b.shape}")
    diff = float(np.max(np.abs(a - b))) if a.size else 0.0
    out_range = float(b.max() - b.min()) if b.size else 0.0
    return a, b, {"max_abs_diff": diff, "mean_abs_diff": float(np.mean(np.abs(a - b))) if a.size else 0.0,
                  "output_range": out_range,
                  "relative_diff": diff / out_range if out_range > 0 else (0.0 if diff == 0 else float("inf"))}


def measure(candidate: np.ndarray, reference: np.ndarray, precision: str = DEFAULT,
            threshold: float | None = None, segments=()) -> dict:
    """Differences between two ``(N, C)`` probability arrays: ``max_abs_diff``, ``output_range``,
    ``relative_diff`` (their ratio), ``top1_agreement``, ``output_std`` (spread of the reference across images),
    and the gate's ``threshold`` (``THRESHOLDS[precision]`` unless given). With ``segments`` (``(start, stop)``
    column ranges, one per task of a multitask model) an image agrees when every task's top-1 agrees."""
    precision = precisions.get(precision).name
    a, b, diffs = _differences(candidate, reference, "output")
    ranges = list(segments) or [(0, a.shape[1] if a.ndim == 2 else 0)]
    agree = np.ones(len(b), bool)
    for start, stop in ranges:
        agree &= np.argmax(a[:, start:stop], axis=1) == np.argmax(b[:, start:stop], axis=1)
    return {
        "n": int(len(b)),
        **diffs,
        "top1_agreement": float(np.mean(agree)) if len(agree) else 1.0,
        "top1_disagreements": int(np.sum(~agree)),
        "output_std": float(np.mean(np.std(b, axis=0))) if len(b) > 1 else 0.0,
        "threshold": THRESHOLDS[precision] if threshold is None else float(threshold),
        "precision": precision,
    }


def passed(result: dict) -> bool:
    gate = precisions.get(result["precision"]).gate
    return gate.passes(result[gate.metric], result["threshold"]) and _features_passed(result)


def _features_passed(result: dict) -> bool:
    """A features output (``tltf export --features``) is held to the fp32 tolerance, as a fraction of the Keras
    features' range, where the precision is held to one (:data:`MAX_DIFF`); fp16 and int8 change the features on
    purpose and carry them ungated (the report gives their ``relative_diff`` and ``min_cosine``)."""
    features = result.get("features")
    if features is None or precisions.get(result["precision"]).gate != MAX_DIFF:
        return True
    return MAX_DIFF.passes(features["relative_diff"], result["threshold"])


def gate(result: dict, precision: str, out: str | Path) -> None:
    """Raise a one-line :class:`TltfError` saying by how much ``result`` misses its precision's threshold."""
    if passed(result):
        return
    need = result["threshold"]
    held_to = precisions.get(precision).gate
    if held_to.passes(result[held_to.metric], need):  # the probabilities pass: the features output failed
        features = result["features"]
        raise TltfError(
            f"{out}: parity check failed, nothing written: features output max |onnxruntime - keras| = "
            f"{features['max_abs_diff']:.3g} is {features['relative_diff']:.3g} of the features' range "
            f"{features['output_range']:.3g}, {features['relative_diff'] / need:.1f}x the {need:g} tolerance "
            f"({result['n']} images; {held_to.option} {_round_up(features['relative_diff'])} would accept it)")
    if held_to == MAX_DIFF:
        raise TltfError(
            f"{out}: parity check failed, nothing written: max |onnxruntime - keras| = {result['max_abs_diff']:.3g}"
            f" is {result['relative_diff']:.3g} of the output range {result['output_range']:.3g}, "
            f"{result['relative_diff'] / need:.1f}x the {need:g} tolerance ({result['n']} images; "
            f"{held_to.option} {_round_up(result['relative_diff'])} would accept it)")
    raise TltfError(
        f"{out}: {precision} parity check failed, nothing written: top-1 agreement with Keras "
        f"{100 * result['top1_agreement']:.1f}% < {100 * need:.0f}% ({result['top1_disagreements']} of "
        f"{result['n']} images differ; max |diff| {result['max_abs_diff']:.3g}; "
        f"{held_to.option} {np.floor(100 * result['top1_agreement']) / 100:.2f} would accept it)")


def _round_up(x: float) -> str:
    """``x`` rounded up to two significant digits, as text (1.14e-4 -> '0.00012')."""
    if not np.isfinite(x) or x <= 0:
        return f"{x:g}"
    exponent = int(np.floor(np.log10(x))) - 1
    return f"{np.ceil(x / 10.0 ** exponent) * 10.0 ** exponent:.2g}"


def spread_random_model(model, images: np.ndarray | None = None, seed: int = 0, logit_std: float = 1.5,
                        gamma: tuple[float, float] = (0.6, 1.6)):
    """Make a randomly initialised tltf classifier's outputs differ from image to image (in place; returns it).

    Freshly initialised networks often give (nearly) the same probabilities for every input -- unit BatchNorm
    statistics that do not match the activations, saturated ReLU6s, a small head -- and a parity tolerance on
    constant outputs proves nothing. This (1) draws BatchNorm scales and offsets from fixed-seed distributions,
    (2) sets every BatchNorm's moving statistics to the batch statistics of ``images`` (default:
    :func:`synthetic_images`) with one training-mode pass at momentum 0, so each layer sees normalised activations,
    and (3) scales the classifier's Dense kernel so its logits spread with standard deviation ``logit_std``, centred
    per class. For tests and benchmarks with ``weights="none"`` models only.
    """
    import keras

    from tltf.models.classifier import backbone_of, head_of

    rng = np.random.default_rng(seed)
    net = backbone_of(model)
    h, w = model.input_shape[1:3]
    if images is None:
        images = synthetic_images(32, (h, w), seed=seed)
    bns = [layer for layer in _all_layers(net) if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        if layer.gamma is not None:
            layer.gamma.assign(rng.uniform(*gamma, tuple(layer.gamma.shape)).astype(np.float32))
        if layer.beta is not None:
            layer.beta.assign(rng.normal(0.0, 0.2, tuple(layer.beta.shape)).astype(np.float32))
    x = model.get_layer("preprocess")(images) if _has_layer(model, "preprocess") else images
    if bns:
        momenta = [layer.momentum for layer in bns]
        for layer in bns:
            layer.momentum = 0.0
        try:
            net(x, training=True)
        finally:
            for layer, momentum in zip(bns, momenta):
                layer.momentum = momentum
        for layer in bns:  # near-dead channels would amplify rounding noise by 1/sqrt(var): floor their variance
            var = np.asarray(layer.moving_variance)
            layer.moving_variance.assign(np.maximum(var, VAR_FLOOR * float(np.median(var)) + 1e-3))
    head = head_of(model)
    features = np.asarray(net(x, training=False))
    pooled = features.mean(axis=(1, 2)) if features.ndim == 4 else features
    kernel = rng.normal(0.0, 1.0, (pooled.shape[1], head.dense.units)).astype(np.float32)
    logits = (pooled - pooled.mean(axis=0)) @ kernel  # one scale for all features: no near-constant one is boosted
    kernel = kernel * (logit_std / (float(logits.std()) + 1e-12))
    bias = -(pooled @ kernel).mean(axis=0)
    head.dense.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return model


def _all_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        yield from _all_layers(layer)


def _has_layer(model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)
