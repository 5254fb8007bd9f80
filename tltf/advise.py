"""``tltf advise``: which transfer strategy suits a dataset, from its size and its closeness to the source domain.

Three measurements, then the classic table of target data size x similarity (cs231n's transfer-learning notes),
with tltf's own measurements where they disagree with it:

- **size**: the labelled training images (train + validation, not test), the classes and the smallest class;
- **linear probe**: held-out accuracy (stratified 3-fold) of :func:`tltf.strategies.features.linear_probe`, a
  softmax regression on the frozen backbone's pooled features (cs231n's "CNN codes");
  ``probe_gain = (accuracy - chance) / (1 - chance)`` with chance the majority-class rate: 0 means the source
  features carry nothing usable linearly, 1 that they separate the classes;
- **proxy-A-distance** (Ben-David et al. 2007; Ganin et al. 2016): a linear domain classifier (the same probe) on
  features of the target images vs a reference set of source-like images -- the 20 ImageNet validation photos of
  the foolbox wheel plus five colour photographs of the scikit-image wheel, three random crops each, or
  ``reference`` -- the two sets balanced by subsampling. With its held-out error ``eps``, ``PAD = 2 (1 - 2 eps)``:
  0 for indistinguishable domains, 2 for perfectly separable ones. Folds are grouped by photograph, so crops of
  one photo never sit on both sides of a split.

>>> report = advise("builtin:lfw_faces", weights="torchvision:mobilenet_v2", image_size=64)   # doctest: +SKIP
>>> report["recommendation"]["strategy"]                                                     # doctest: +SKIP
'finetune'

:func:`recommend` is the decision alone (pure, on numbers), so it can be read and tested without a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tltf.errors import TltfError

#: Dataset size bands of the table: "< 100", "hundreds-thousands", "> 10,000" labelled images.
SMALL, LARGE = 100, 10_000
#: ``probe_gain`` at or above which the frozen source features count as close to the target task.
PROBE_HIGH = 0.8
#: PAD below which the target images count as source-like whatever the probe says. Measured with
#: mobilenet_v2 (torchvision weights) at 64 px: ImageNet/scikit-image photos split in two halves 0.06-0.39 (3 seeds);
#: builtin:lfw_faces 1.81, shapes 1.76-1.89, mnist 1.92, uci_digits 1.92.
PAD_CLOSE = 1.0
#: PAD at or above which a linear classifier tells the target from source photos almost always: then a good probe
#: alone does not make the domain close (the four built-in datasets above; `tltf compare` on lfw_faces and shapes
#: found fine-tuning every layer best there, ahead of the upper-layers plan).
PAD_FAR = 1.5
#: Full-batch-ish passes of each probe (batch 256, Adam at 1e-2): enough for the standardised softmax regression
#: to converge on a few hundred to a thousand images.
PROBE_EPOCHS = 50


@dataclass(frozen=True)
class Advice:
    """One row of the size x similarity table, and how to run it with tltf."""

    strategy: str  # a `tltf compare` strategy name
    table: str  # the recommendation as the table words it
    fit_args: str  # the `tltf fit` options that do it


#: (size band, similarity) -> advice. Small data far from the source: the textbook says "light fine-tuning", but
#: measured on ``benchmarks/small_data.py`` (10 images per class, MobileNetV2) fine-tuning lost to a linear
#: classifier on the frozen features on every task, and one that also reads earlier blocks (cs231n: "train the
#: classifier from activations somewhere earlier in the network") won; that is ``--stage feature`` with tltf's
#: defaults (multi-level features, the logistic-regression head, refit on all images).
TABLE = {
    ("small", "high"): Advice("feature", "feature extraction only (a linear classifier on the frozen features)",
                              "--stage feature"),
    ("small", "low"): Advice("feature", "a linear classifier that also reads earlier layers' features",
                             "--stage feature (multi-level features: the top half of the blocks and the last)"),
    ("medium", "high"): Advice("partial:{half}", "fine-tune upper layers",
                               "--stage finetune --freeze-until {half} (the lower half of the blocks stays frozen)"),
    ("medium", "low"): Advice("finetune", "fine-tune all layers", "--stage finetune"),
    ("large", "high"): Advice("finetune", "fine-tune all layers", "--stage finetune"),
    ("large", "low"): Advice("scratch", "consider training from scratch",
                             "--weights none --stage scratch (and `tltf compare` it with finetune)"),
}


#: Below this many labelled images in the smallest class, prototypes beat the linear classifier: 10-way episodes
#: on frozen multi-level MobileNetV2 features (benchmarks/fewshot.py; logistic regression C=1 on standardised
#: features, 60 episodes): 1 shot 0.593 vs 0.572 (UCI digits), 0.494 vs 0.471 (MNIST); at 5 shots the linear
#: classifier wins, 0.862 vs 0.824 and 0.789 vs 0.729, and at 10 per class tltf's LP head wins on every task of
#: benchmarks/small_data.py (MNIST 0.877 vs 0.819, UCI 0.926 vs 0.770, shapes 0.902 vs 0.864).
PROTOTYPES_BELOW = 3
PROTOTYPES = Advice("prototypes", "a prototype classifier (nearest class mean of the frozen features)",
                    "--stage prototypes")


def size_band(n_images: int) -> str:
    return "small" if n_images < SMALL else "large" if n_images > LARGE else "medium"


def recommend(n_images: int, probe_accuracy: float | None, chance: float, pad: float | None = None,
              num_blocks: int = 0, min_per_class: int | None = None) -> dict:
    """The size x similarity recommendation for ``n_images`` labelled images and the measured closeness (pure).

    ``num_blocks`` (the backbone's, ``tltf backbones``) places "fine-tune upper layers": everything up to block
    ``num_blocks // 2 - 1`` stays frozen; unknown (0), the ``gradual`` plan stands in for it. With fewer than
    :data:`PROTOTYPES_BELOW` images in the smallest class (``min_per_class``) of small data: prototypes.

    Similarity is ``high`` when the images are hard to tell from source photos (``PAD <`` :data:`PAD_CLOSE`), or
    when the frozen features separate the target classes (``probe_gain >=`` :data:`PROBE_HIGH`) and the domain is
    not far (``PAD <`` :data:`PAD_FAR`); otherwise ``low``. A measurement that is missing (``None``) does not
    count against closeness.
    """
    band = size_band(n_images)
    gain = None
    if probe_accuracy is not None:
        gain = (probe_accuracy - chance) / (1 - chance) if chance < 1 else 0.0
    reasons = [f"{n_images} labelled training images: "
               + {"small": f"fewer than {SMALL}", "medium": f"between {SMALL} and {LARGE:,}",
                  "large": f"more than {LARGE:,}"}[band]]
    close_probe = gain is not None and gain >= PROBE_HIGH
    close_pad = pad is not None and pad < PAD_CLOSE
    far_pad = pad is not None and pad >= PAD_FAR
    if gain is not None:
        reasons.append(f"linear probe on frozen features: accuracy {probe_accuracy:.3f} vs chance {chance:.3f} "
                       f"(gain {gain:.2f}; {'>=' if close_probe else '<'} {PROBE_HIGH} counts as close)")
    if pad is not None:
        verdict = ("< {}: source-like images".format(PAD_CLOSE) if close_pad
                   else ">= {}: a domain a linear classifier tells apart".format(PAD_FAR) if far_pad
                   else "between {} and {}: a moderate domain gap".format(PAD_CLOSE, PAD_FAR))
        reasons.append(f"proxy-A-distance to source photos: {pad:.2f} of 2 ({verdict})")
    if gain is None and pad is None:
        raise TltfError("advise: neither a linear probe nor a proxy-A-distance was measured")
    similarity = "high" if close_pad or (close_probe and not far_pad) else "low"
    advice = TABLE[(band, similarity)]
    if band == "small" and min_per_class is not None and min_per_class < PROTOTYPES_BELOW:
        advice = PROTOTYPES
        reasons.append(f"{min_per_class} labelled image(s) in the smallest class (< {PROTOTYPES_BELOW}): "
                       "prototypes beat a linear classifier at 1 shot (UCI digits 0.593 vs 0.572, MNIST 0.494 vs "
                       "0.471), not from 5 (0.824 vs 0.862)")
    if band == "small" and advice.strategy == "feature":
        reasons.append("small data: on benchmarks/small_data.py (10 images per class) the logistic-regression head "
                       "beat every fine-tuning tried and every Adam-trained head, with or without augmentation and "
                       "dropout (MNIST 0.877 vs at most 0.789, shapes 0.902 vs at most 0.829)")
    if "{half}" in advice.strategy:
        if num_blocks >= 2:
            half = num_blocks // 2 - 1
            advice = Advice(advice.strategy.format(half=half), advice.table, advice.fit_args.format(half=half))
        else:
            advice = Advice("gradual", advice.table, "--stage gradual (head, top block, top half, all)")
    reasons.append(f"size x similarity: {band} data x {similarity} similarity -> {advice.table}")
    if advice.strategy != "scratch":
        reasons.append("always check against the from-scratch baseline: `tltf compare` (negative transfer)")
    return {"strategy": advice.strategy, "table": advice.table, "fit_args": advice.fit_args, "size_band": band,
            "similarity": similarity, "probe_gain": gain, "reasons": reasons}


# --- measurements -----------------------------------------------------------------------------------------------

def count(source) -> dict:
    """Images per class of the labelled training data (train + val) and of the test split."""
    labels = source.train.selected_labels
    if source.val is not None:
        labels = np.concatenate([labels, source.val.selected_labels])
    per_class = np.bincount(labels.astype(np.int64), minlength=len(source.class_names))
    return {"images": int(len(labels)), "classes": len(source.class_names),
            "per_class": {name: int(n) for name, n in zip(source.class_names, per_class)},
            "min_per_class": int(per_class.min()), "test_images": len(source.test) if source.test else 0}


def _probe_accuracy(x: np.ndarray, y: np.ndarray, folds: np.ndarray, class_names: list[str], seed: int,
                    epochs: int = PROBE_EPOCHS) -> float:
    """Held-out accuracy of :func:`tltf.strategies.features.linear_probe` (standardised softmax regression),
    pooled over the folds: each fold is predicted by a probe trained on the others."""
    from tltf.strategies.features import Features, linear_probe

    correct = total = 0
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        if len(np.unique(y[train])) < 2 or not test.any():
            continue
        feats = Features(class_names, {"train": x[train], "val": x[test]}, {"train": y[train], "val": y[test]})
        result = linear_probe(feats, epochs=epochs, batch_size=256, learning_rate=1e-2, seed=seed + int(k))
        correct += round(result["val_accuracy"] * int(test.sum()))
        total += int(test.sum())
    return correct / total if total else float("nan")


def _stratified_folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), np.int64)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        folds[idx] = np.arange(len(idx)) % k
    return folds


def _grouped_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    unique = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {g: int(i % k) for g, i in zip(unique[order], range(len(unique)))}
    return np.array([fold_of[g] for g in groups])


def proxy_a_distance(source: np.ndarray, target: np.ndarray, source_groups: np.ndarray | None = None,
                     folds: int = 3, seed: int = 0, target_groups: np.ndarray | None = None,
                     epochs: int = PROBE_EPOCHS) -> dict:
    """PAD = 2 (1 - 2 eps) of two feature sets, eps the held-out error of a linear domain classifier (the
    linear probe) over ``folds`` folds; ``source_groups`` / ``target_groups`` keep related rows (crops of one
    photo) in one fold. The larger set is subsampled to the smaller one's size, so a constant guess scores
    eps = 0.5 (PAD 0); eps is capped at 0.5, so PAD lies in [0, 2]."""
    groups = np.arange(len(source)) if source_groups is None else np.asarray(source_groups)
    t_groups = np.arange(len(target)) if target_groups is None else np.asarray(target_groups)
    n = min(len(source), len(target))
    if n < folds:
        raise TltfError(f"proxy-A-distance: {n} images per domain, fewer than the {folds} folds")
    rng = np.random.default_rng(seed)
    keep_s, keep_t = np.sort(rng.permutation(len(source))[:n]), np.sort(rng.permutation(len(target))[:n])
    source, groups, target, t_groups = source[keep_s], groups[keep_s], target[keep_t], t_groups[keep_t]
    x = np.concatenate([source, target])
    y = np.concatenate([np.zeros(len(source), np.int64), np.ones(len(target), np.int64)])
    all_groups = np.concatenate([groups, groups.max() + 1 + t_groups - t_groups.min()])
    accuracy = _probe_accuracy(x, y, _grouped_folds(all_groups, folds, seed), ["source", "target"], seed, epochs)
    eps = min(1.0 - accuracy, 0.5)
    return {"pad": 2.0 * (1.0 - 2.0 * eps), "domain_error": eps, "reference_images": int(len(source)),
            "target_images": int(len(target)), "folds": folds}


def reference_photos(size: tuple[int, int], crops: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Source-like images: ImageNet photos (foolbox) and colour photographs (scikit-image), ``crops`` random crops
    of each at ``size``; returns ``(uint8 images (N, H, W, 3), photo index per image)``."""
    import tensorflow as tf
    from PIL import Image

    from tltf.data import offline

    paths = [p for p, _ in offline.imagenet_photos()]
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"):
        try:
            paths.append(offline.wheel_file(offline.SKIMAGE, f"skimage/data/{name}"))
        except TltfError:
            pass
    rng = np.random.default_rng(seed)
    images, groups = [], []
    for g, path in enumerate(paths):
        with Image.open(path) as im:
            photo = np.asarray(im.convert("RGB"))
        h, w = photo.shape[:2]
        for _ in range(crops):
            scale = rng.uniform(0.5, 1.0)
            ch, cw = int(h * scale), int(w * scale)
            top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            crop = tf.image.resize(photo[top:top + ch, left:left + cw], size, antialias=True)
            images.append(np.clip(np.round(crop.numpy()), 0, 255).astype(np.uint8))
            groups.append(g)
    return np.stack(images), np.array(groups)


def advise(data: str, backbone: str = "mobilenet_v2", weights: str = "torchvision:mobilenet_v2",
           image_size: int | None = None, seed: int = 0, max_images: int = 1000, folds: int = 3,
           data_dir: str | None = None, reference: str | None = None, log=None) -> dict:
    """Count ``data``, measure its closeness to the backbone's source domain, and recommend a strategy.

    ``reference``: source-like images for the proxy-A-distance: a folder (any layout, labels ignored) or a
    ``--data``-style spec (its training split); default: :func:`reference_photos`.
    """
    from tltf import backbones
    from tltf.data import array_split, load_source
    from tltf.data.sources import unlabelled_folder
    from tltf.models.classifier import build_classifier
    from tltf.strategies.features import split_features

    source = load_source(data, data_dir)
    counts = count(source)
    if counts["classes"] < 2 or counts["min_per_class"] < 1:
        raise TltfError(f"--data {data}: needs at least two classes with images")
    model = build_classifier(backbone, source.class_names, image_size, weights, dropout=0.0, train_bn=False)
    size = tuple(model.input_shape[1:3])

    # the labelled images (train + val), a random sample of at most max_images in proportion to each part
    parts = [source.train] + ([source.val] if source.val is not None else [])
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for part in parts:
        budget = max(1, int(round(max_images * len(part) / counts["images"])))
        take = np.sort(rng.permutation(len(part))[:budget])
        feats = split_features(model, part.select(take), batch_size=64)
        xs.append(feats.x)
        ys.append(feats.y)
    x, y = np.concatenate(xs), np.concatenate(ys).astype(np.int64)
    if log:
        log(f"features of {len(x)} target images: {x.shape[1]} dims")
    names = list(source.class_names)
    present = np.bincount(y, minlength=len(names))
    chance = float(present.max() / len(y))
    k = max(2, min(folds, int(present[present > 0].min())))
    probe = _probe_accuracy(x, y, _stratified_folds(y, k, seed), names, seed)

    if reference is None:
        ref_images, groups = reference_photos(size, seed=seed)
        ref_split = array_split(ref_images, np.zeros(len(ref_images), np.int64), "reference photos")
        ref_name = "ImageNet/scikit-image photos"
    else:
        ref_split = (unlabelled_folder(reference, option="--reference") if Path(str(reference)).is_dir()
                     else load_source(reference, data_dir, option="--reference").train)
        groups = np.arange(len(ref_split))
        ref_name = str(reference)
    ref = split_features(model, ref_split, batch_size=64).x
    pad = proxy_a_distance(ref, x, groups, folds, seed)
    pad.update(reference=ref_name, reference_groups=int(len(np.unique(groups))))

    decision = recommend(counts["images"], probe, chance, pad["pad"], backbones.get(backbone).num_blocks,
                         counts["min_per_class"])
    return {"data": data, "backbone": backbone, "weights": weights, "image_size": list(size), "counts": counts,
            "linear_probe": {"accuracy": probe, "chance": chance, "gain": decision["probe_gain"], "images": len(x),
                             "folds": k, "feature_dims": int(x.shape[1])},
            "proxy_a_distance": pad,
            "recommendation": {k_: v for k_, v in decision.items() if k_ != "probe_gain"}}


def format_report(report: dict) -> str:
    """The report as a few lines for a terminal."""
    c, p, d, r = report["counts"], report["linear_probe"], report["proxy_a_distance"], report["recommendation"]
    test = f", {c['test_images']} test" if c["test_images"] else ""
    lines = [f"data: {report['data']}: {c['images']} labelled images, {c['classes']} classes "
             f"(smallest {c['min_per_class']}){test}",
             f"backbone: {report['backbone']} ({report['weights']}) at {report['image_size'][0]}x"
             f"{report['image_size'][1]}",
             f"linear probe: {p['accuracy']:.3f} (chance {p['chance']:.3f}, gain {p['gain']:.2f}) over "
             f"{p['images']} images, {p['folds']}-fold",
             f"proxy-A-distance: {d['pad']:.2f} (domain error {d['domain_error']:.3f}; {d['target_images']} target "
             f"vs {d['reference_images']} images from {d['reference_groups']} sources: {d['reference']})",
             "",
             f"recommendation: {r['table']} -> tltf fit {r['fit_args']}",
             "because:"] + [f"  - {reason}" for reason in r["reasons"]]
    return "\n".join(lines)
