"""A frozen backbone as a fixed feature extractor: "CNN codes" (cs231n), cached on disk, and a linear probe on them.

Each image's features are the backbone's globally average-pooled output (what the classifier head pools anyway),
computed once in inference mode and cached under ``$TLTF_CACHE/features`` (default ``~/.cache/tltf/features``).

**The cache key is what determines the numbers**, not the names used to ask for them:

- the extractor: the preprocessing layer's config, every backbone layer's class and config (BatchNorm epsilons
  included) and the *values* of all their weights (so ``--weights imagenet``, a file, an import, a re-initialised
  block or a fine-tuned copy each get their own key, and an edited weights file is never served stale features);
- the data: the exact resized uint8 pixels and labels of the split, in order (hashed in a decode-only pass, which
  costs a small fraction of the backbone pass it can save). Two specs naming the same images share an entry; a
  changed image, a different validation split or seed, or a different ``--image-size`` gets a new one.

Keras loads only in the functions that need it: the cache itself (:func:`cached_features`) runs without
TensorFlow, for ``tltf drift`` on an ``.onnx`` file.

>>> feats = extract_features("builtin:shapes", backbone="mobilenet_v2", weights="torchvision:mobilenet_v2",
...                          image_size=64)                                  # doctest: +SKIP
>>> feats.x["train"].shape, feats.class_names                              # doctest: +SKIP
((480, 1280), ['circle', 'square', 'triangle'])
>>> feats.save("feats.npz")                                                 # doctest: +SKIP
>>> linear_probe(feats)["val_accuracy"]                                     # doctest: +SKIP
0.95
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from tltf.errors import TltfError

if TYPE_CHECKING:
    import keras

FORMAT = 1  # bump when the meaning of a cached file changes
SPLITS = ("train", "val", "test")
_NOT_FUNCTION = ("name", "trainable")  # layer config keys that do not change what the layer computes
_KEEP_PIXELS_BYTES = 512 * 1024 ** 2  # keep decoded pixels from the hashing pass (instead of decoding twice) up to this


def cache_root() -> Path:
    from tltf.data.offline import cache_dir

    return cache_dir() / "features"


# --- the extractor ---------------------------------------------------------------------------------------------

def feature_extractor(model: keras.Model) -> keras.Model:
    """``pixels -> preprocess -> backbone -> global average pool`` of a tltf classifier, sharing its layers."""
    import keras

    from tltf.models.classifier import PREPROCESS_NAME, backbone_layer

    inputs = keras.Input(model.input_shape[1:], name="pixels")
    x = backbone_layer(model)(model.get_layer(PREPROCESS_NAME)(inputs))
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="codes")(x)
    return keras.Model(inputs, x, name="feature_extractor")


def fingerprint(model: keras.Model) -> str:
    """SHA-256 of what the extractor of a tltf classifier computes: layer classes, configs and weight values."""
    import keras

    from tltf.models.classifier import PREPROCESS_NAME, backbone_layer

    wrapper = backbone_layer(model)
    pre = model.get_layer(PREPROCESS_NAME)
    h = hashlib.sha256()
    layers = [pre, *wrapper.net.layers]
    arch = [[type(layer).__name__, {k: v for k, v in layer.get_config().items() if k not in _NOT_FUNCTION}]
            for layer in layers if not isinstance(layer, keras.layers.InputLayer)]
    head = {"format": FORMAT, "input": list(model.input_shape[1:]), "bn_inference": wrapper.bn_inference,
            "pool": "avg", "arch": arch}
    if wrapper.taps:  # multi-level features: a different function of the same layers
        head["taps"] = list(wrapper.taps)
    h.update(json.dumps(head, sort_keys=True, default=str).encode())
    for layer in layers:
        for w in layer.weights:
            value = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
            h.update(str((value.shape, value.dtype.str)).encode())
            h.update(value.tobytes())
    return h.hexdigest()


# --- one split -------------------------------------------------------------------------------------------------

@dataclass
class SplitFeatures:
    """The features of one split, and where they came from (``cached``: read from disk, no backbone pass)."""

    x: np.ndarray
    y: np.ndarray
    cached: bool
    seconds: float
    path: Path | None = None


def split_features(model: keras.Model, split, batch_size: int = 32, cache: bool = True,
                   extractor: keras.Model | None = None, model_key: str | None = None) -> SplitFeatures:
    """Features ``(N, C)`` float32 and labels ``(N,)`` of ``split`` (a :class:`tltf.data.Split`) through ``model``'s
    frozen backbone, read from the cache when the same extractor has seen the same pixels and labels."""
    from tltf.data import make_pipeline

    start = time.perf_counter()
    size = tuple(model.input_shape[1:3])
    pipeline = make_pipeline(split, size, batch_size, cache=False)
    key = (model_key or fingerprint(model)) if cache else None

    def extract():  # the extractor is built only when the cache misses
        net = extractor or feature_extractor(model)
        return (lambda x: net.predict_on_batch(x)), int(net.output_shape[-1])

    return cached_features(pipeline, key, extract, start)


def cached_features(batches: Iterable, key: str | None, extract: Callable[[], tuple[Callable, int]],
                    start: float | None = None) -> SplitFeatures:
    """The features of ``batches`` (re-iterable ``(pixels, labels)`` batches: float32 pixels that are whole numbers
    in [0, 255]) through the extractor that ``extract()`` returns as ``(function of a batch of pixels, width)``,
    read from the cache entry of ``key`` (what the extractor computes) and the pixels and labels, or computed and
    written there; ``key=None``: no cache. Needs no TensorFlow itself: ``tltf drift`` on an ``.onnx`` file keys
    its onnxruntime features by the file's SHA-256 here."""
    start = time.perf_counter() if start is None else start
    path, kept = None, None
    if key is not None:
        data_key, kept = _hash_split(batches)
        path = cache_root() / f"{hashlib.sha256((key + data_key).encode()).hexdigest()[:40]}.npz"
        hit = _read(path)
        if hit is not None:
            return SplitFeatures(hit[0], hit[1], True, time.perf_counter() - start, path)
    function, width = extract()
    xs, ys = [], []
    for x, y in (kept if kept is not None else batches):
        xs.append(np.asarray(function(x), np.float32))
        ys.append(np.asarray(y, np.int64))
    x = np.concatenate(xs) if xs else np.zeros((0, width), np.float32)
    y = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
    if path is not None:
        _write(path, x, y)
    return SplitFeatures(x, y, False, time.perf_counter() - start, path)


def _hash_split(pipeline) -> tuple[str, list | None]:
    """SHA-256 of the split's uint8 pixels and labels in order; the decoded batches too while they are small."""
    h = hashlib.sha256()
    kept, size = [], 0
    for x, y in pipeline:
        pixels = np.asarray(x).astype(np.uint8)  # the pipeline's floats are whole numbers in [0, 255]
        labels = np.asarray(y, np.int64)
        h.update(str(pixels.shape).encode())
        h.update(pixels.tobytes())
        h.update(labels.tobytes())
        size += pixels.nbytes
        if kept is not None and size <= _KEEP_PIXELS_BYTES:
            kept.append((x, y))
        else:
            kept = None
    return h.hexdigest(), kept


def _read(path: Path):
    if not path.exists():
        return None
    try:
        with np.load(path) as f:
            if int(f["format"]) != FORMAT:
                return None
            return f["x"].astype(np.float32), f["y"].astype(np.int64)
    except Exception:  # a damaged entry is recomputed and replaced
        return None


def _write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    from tltf.atomic import replacing

    with replacing(path, ".npz") as tmp:
        np.savez(tmp, x=x, y=y, format=np.int64(FORMAT))


# --- a whole dataset: extract_features ---------------------------------------------------------------------------

@dataclass
class Features:
    """CNN codes of a dataset: ``x[split]`` ``(N, C)`` float32 and ``y[split]`` ``(N,)`` per split present."""

    class_names: list[str]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    backbone: str = ""
    weights: str = ""
    image_size: tuple[int, int] = (0, 0)
    info: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """A ``.npz``: ``x``/``y`` (train), ``x_val``/``y_val``, ``x_test``/``y_test``, ``class_names`` and provenance
        (the keys of tltf's ``.npz`` data format, so the splits read the same way)."""
        from tltf.atomic import replacing

        path = Path(path)
        arrays = {}
        for split in self.x:
            suffix = "" if split == "train" else f"_{split}"
            arrays[f"x{suffix}"] = self.x[split]
            arrays[f"y{suffix}"] = self.y[split]
        with replacing(path, ".npz") as tmp:
            np.savez(tmp, **arrays, class_names=np.array(self.class_names), backbone=np.array(self.backbone),
                     weights=np.array(self.weights), image_size=np.array(self.image_size))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Features":
        path = Path(path)
        if not path.exists():
            raise TltfError(f"{path}: no such features file")
        try:
            with np.load(path) as f:
                if "x" not in f or "y" not in f or "class_names" not in f:
                    raise TltfError(f"{path}: not a features file (needs x, y and class_names)")
                x, y = {}, {}
                for split in SPLITS:
                    suffix = "" if split == "train" else f"_{split}"
                    if f"x{suffix}" in f:
                        x[split], y[split] = f[f"x{suffix}"].astype(np.float32), f[f"y{suffix}"].astype(np.int64)
                return cls([str(c) for c in f["class_names"]], x, y,
                           str(f["backbone"]) if "backbone" in f else "",
                           str(f["weights"]) if "weights" in f else "",
                           tuple(int(s) for s in f["image_size"]) if "image_size" in f else (0, 0))
        except TltfError:
            raise
        except Exception as e:
            raise TltfError(f"{path}: not a readable .npz ({str(e).splitlines()[0][:120]})") from None


def extract_features(data, backbone: str = "mobilenet_v2", weights: str = "imagenet", image_size: int | None = None,
                     batch_size: int = 32, val_split: float = 0.2, seed: int = 0, data_dir: str | None = None,
                     cache: bool = True, verbose: bool = False, features: str = "final") -> Features:
    """Pooled features of every split of ``data`` (a ``--data`` spec or a loaded :class:`tltf.data.Source`)
    through the frozen, pretrained ``backbone`` (BatchNorm in inference mode).

    The validation split is the data's own, or ``val_split`` of train (stratified, ``seed``) as in ``tltf fit``, so
    the same arguments give the same split as a fit run. Features are read from / written to the cache
    (``cache=False``: neither). ``features``: ``final`` (the network's pooled output) or ``multilevel`` (also the
    top half of the blocks, as ``tltf fit --features multilevel`` reads them).
    """
    from tltf import backbones
    from tltf.data import Source, load_data
    from tltf.models.classifier import build_classifier

    source = data if isinstance(data, Source) else load_data(data, val_split, seed, data_dir)
    spec = backbones.get(backbone)
    model = build_classifier(spec, source.class_names, image_size, weights, dropout=0.0, train_bn=False,
                             features=features)
    extractor = feature_extractor(model)
    key = fingerprint(model) if cache else None
    x, y, info = {}, {}, {}
    for name in SPLITS:
        split = getattr(source, name)
        if split is None:
            continue
        result = split_features(model, split, batch_size, cache, extractor, key)
        x[name], y[name] = result.x, result.y
        info[name] = {"n": len(result.y), "cached": result.cached, "seconds": round(result.seconds, 3)}
        if verbose:
            how = "read from cache" if result.cached else "computed"
            print(f"{name}: {len(result.y)} images -> {result.x.shape[1]} features, {how} "
                  f"in {result.seconds:.1f}s", flush=True)
    return Features(list(source.class_names), x, y, spec.name, str(weights), tuple(model.input_shape[1:3]), info)


def feature_scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(mean, std)`` of ``x`` for standardising features (``std`` + 1e-6: a constant feature stays
    finite)."""
    return x.mean(axis=0), x.std(axis=0) + 1e-6


# --- the linear probe --------------------------------------------------------------------------------------------

def linear_probe(features: Features | str | Path, l2: float = 1e-3, epochs: int = 100, batch_size: int = 64,
                 learning_rate: float = 1e-3, seed: int = 0) -> dict:
    """Softmax regression on the features (cs231n's linear classifier on CNN codes): how linearly separable the
    classes are in the backbone's feature space.

    Features are standardised with the training split's mean and standard deviation, then one ``Dense`` softmax
    layer is trained with Adam on the cross-entropy plus ``l2 * ||W||^2`` (Keras' L2; the bias is not penalised)
    for ``epochs`` full passes. Returns ``train_accuracy``, ``val_accuracy`` and ``test_accuracy`` (``None`` for a
    split that is missing), the settings and ``seconds``. Deterministic for a given ``seed`` on one machine.
    """
    feats = features if isinstance(features, Features) else Features.load(features)
    if "train" not in feats.x or len(feats.y["train"]) == 0:
        raise TltfError("linear probe: the features have no training split")
    if l2 < 0 or epochs < 1 or batch_size < 1:
        raise TltfError(f"linear probe: l2 >= 0, epochs >= 1 and batch_size >= 1 (got {l2}, {epochs}, {batch_size})")
    import keras

    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    x_train = feats.x["train"]
    mean, std = feature_scale(x_train)

    def scaled(a):
        return ((a - mean) / std).astype(np.float32)

    k = len(feats.class_names)
    model = keras.Sequential([keras.Input((x_train.shape[1],)),
                              keras.layers.Dense(k, activation="softmax",
                                                 kernel_regularizer=keras.regularizers.L2(l2) if l2 else None)])
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(scaled(x_train), feats.y["train"], batch_size=batch_size, epochs=epochs, shuffle=True, verbose=0)

    def accuracy(split):
        if split not in feats.x or len(feats.y[split]) == 0:
            return None
        pred = np.asarray(model(scaled(feats.x[split]), training=False)).argmax(axis=1)  # eager: no retracing
        return float((pred == feats.y[split]).mean())

    return {"train_accuracy": accuracy("train"), "val_accuracy": accuracy("val"), "test_accuracy": accuracy("test"),
            "num_train": int(len(feats.y["train"])), "num_features": int(x_train.shape[1]), "num_classes": k,
            "l2": l2, "epochs": epochs, "chance": float(np.bincount(feats.y["train"]).max() / len(feats.y["train"])),
            "seconds": round(time.perf_counter() - start, 2)}
