"""A trained classifier and its data -> one score per training example: how much the validation loss would drop
without it (instance-based transfer, Wang et al., arXiv 1809.02776; the harmful examples are mostly wrong labels
or images from another domain).

The scores are influence functions (:mod:`tltf.instances.influence`) on the classifier's head: every image of
both splits goes once through the frozen network to its penultimate features (cached, as ``tltf features`` does:
:func:`tltf.strategies.features.split_features`), and the influence is that of the softmax layer on them.

**The head is refitted first** (``refit=True``): the influence approximation assumes an optimum of the head's
training objective, and a head trained jointly with its network by a few epochs of Adam (with dropout, no L2) is
not at one. The refit starts from the model's own head, on standardised features, and runs Newton-CG to a
gradient norm of 1e-8 (``benchmarks/instances_noisy_mnist.py`` measures both ways). The *predicted* labels that
are reported are the model's own, as ``tltf predict`` gives them.

>>> scores, train = score_data("runs/noisy/model.keras", "digits/")        # doctest: +SKIP
>>> scores.rows()[0]                                                        # doctest: +SKIP
{'file': 'digits/3/0412.png', 'label': '3', 'predicted': '8', 'score': 0.0021}
>>> from tltf.instances import auto_drop_count
>>> kept = train.select(scores.keep(auto_drop_count(scores.scores)))      # doctest: +SKIP
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from tltf.errors import TltfError
from tltf.instances.influence import VAL_LOSSES, SoftmaxHead, fit_head, influence_scores, validation_loss
from tltf.instances.items import item_names

#: the head's L2 coefficient (``J``'s ``l2 / 2 * ||W||^2`` on standardised features, mean loss). Larger values
#: keep the head from fitting the wrong labels (their pull is 1/n each) and bring the first-order approximation
#: closer to exact leave-one-out. Measured on MNIST with 20 % flipped labels (benchmarks/instances_noisy_mnist.py):
#: the flipped share of the top of the scores is 0.866 at 1e-3, 0.935 at 0.01, 0.964 at 0.1, 0.965 at 0.3 and
#: 0.957 at 1 (5 seeds).
DEFAULT_L2 = 0.1
#: the validation loss of the scores (:func:`tltf.instances.influence.validation_loss`)
DEFAULT_VAL_LOSS = "error"


@dataclass
class InstanceScores:
    """A score per training example, in the order of the training split (``positions`` 0..n-1).

    ``scores``: the predicted decrease of the mean validation loss (``info["val_loss"]``: the expected error by
    default) when the example is removed (higher: more harmful; > 0: removing it is predicted to help);
    ``labels``: the given labels and ``predicted``: the model's, both as indices into ``class_names``;
    ``names``: the image file or ``train[INDEX]``; ``info``: sizes, settings, losses and timings.
    """

    names: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    scores: np.ndarray
    class_names: list[str]
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def order(self) -> np.ndarray:
        """Positions from the most harmful to the most helpful (ties: the earlier position first)."""
        return np.lexsort((np.arange(len(self.scores)), -self.scores))

    def harmful(self, count: int) -> np.ndarray:
        """The ``count`` most harmful positions, most harmful first."""
        return self.order()[:max(0, int(count))]

    def keep(self, drop: int) -> np.ndarray:
        """The positions left after dropping the ``drop`` most harmful, in increasing order (for
        ``Split.select``)."""
        kept = np.ones(len(self.scores), bool)
        kept[self.harmful(drop)] = False
        return np.flatnonzero(kept)

    def rows(self) -> list[dict]:
        """``{"file", "label", "predicted", "score"}`` per example, most harmful first (labels as class names)."""
        return [{"file": self.names[i], "label": self.class_names[self.labels[i]],
                 "predicted": self.class_names[self.predicted[i]], "score": float(self.scores[i])}
                for i in self.order()]


def model_head(model) -> SoftmaxHead:
    """The softmax layer of a tltf classifier as a :class:`SoftmaxHead` on its penultimate features; a binary
    head's single sigmoid unit ``sigma(z)`` becomes the equivalent softmax over ``(0, z)``."""
    from tltf.models.classifier import head_of

    try:
        dense = head_of(model).dense
    except (ValueError, AttributeError):
        raise TltfError(f"{model.name}: not a tltf classifier (no 'head' layer with a dense classifier)") from None
    kernel = np.asarray(dense.kernel.numpy(), np.float64)
    bias = np.asarray(dense.bias.numpy(), np.float64) if dense.use_bias else np.zeros(kernel.shape[1])
    if kernel.shape[1] == 1:
        kernel = np.concatenate([np.zeros_like(kernel), kernel], axis=1)
        bias = np.array([0.0, bias[0]])
    return SoftmaxHead(kernel, bias)


def label_map(data_names, model_names, option: str = "--data") -> np.ndarray:
    """``map[data_label] = model_label``, matching classes by name; a class the model does not know is an error."""
    model_names = [str(n) for n in model_names]
    unknown = [str(n) for n in data_names if str(n) not in model_names]
    if unknown:
        shown = ", ".join(model_names[:10]) + (", ..." if len(model_names) > 10 else "")
        raise TltfError(f"{option}: class {unknown[0]!r} is not one of the model's classes ({shown})")
    return np.array([model_names.index(str(n)) for n in data_names], np.int64)


def score_features(x: np.ndarray, y: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, head: SoftmaxHead,
                   l2: float = DEFAULT_L2, refit: bool = True, val_loss: str = DEFAULT_VAL_LOSS,
                   damping: float = 0.0) -> tuple[np.ndarray, dict]:
    """Influence scores from features: ``x`` ``(n, d)`` with labels ``y``, ``x_val``/``y_val``, and the model's
    ``head`` on raw features. Features are standardised with the training mean and deviation; the head is
    refitted to the optimum of ``J`` from its own weights (``refit``), or taken as it is. ``val_loss``: ``error``
    or ``cross_entropy`` (:func:`tltf.instances.influence.validation_loss`). ``(scores, info)``."""
    if not l2 > 0 or not np.isfinite(l2):
        raise TltfError(f"--l2 {l2:g}: must be above 0 (the head's objective must be strictly convex)")
    if val_loss not in VAL_LOSSES:
        raise TltfError(f"--val-loss {val_loss}: choose {' or '.join(VAL_LOSSES)}")
    from tltf.strategies.features import feature_scale

    x = np.asarray(x, np.float64)
    x_val = np.asarray(x_val, np.float64)
    mean, std = feature_scale(x)
    xs, xs_val = (x - mean) / std, (x_val - mean) / std
    start = time.perf_counter()
    scoring_head = head.standardised(mean, std)
    info = {"l2": l2, "refit": refit, "val_loss": val_loss,
            "val_loss_model": validation_loss(scoring_head, xs_val, y_val, val_loss)}
    if refit:
        scoring_head, fit = fit_head(xs, y, head.num_classes, l2, init=scoring_head, tol=1e-8)
        info.update(refit_newton_steps=fit.iterations, refit_products=fit.products,
                    refit_gradient_norm=fit.gradient_norm,
                    val_loss_refit=validation_loss(scoring_head, xs_val, y_val, val_loss))
    influence = influence_scores(scoring_head, xs, y, xs_val, y_val, l2, val_loss, damping=damping)
    info.update(cg_iterations=influence.cg_iterations, cg_residual=influence.residual,
                head_seconds=round(time.perf_counter() - start, 3))
    return influence.scores, info


def score_instances(model, train, val, class_names=None, *, val_class_names=None, l2: float = DEFAULT_L2,
                    refit: bool = True, val_loss: str = DEFAULT_VAL_LOSS, batch_size: int = 32, cache: bool = True,
                    names: list[str] | None = None) -> InstanceScores:
    """Score every example of ``train`` (a :class:`tltf.data.Split`) by the influence of removing it on the
    loss over ``val`` (a Split), for ``model``: a tltf classifier (in memory, e.g. the training engine's, or a
    ``.keras`` path).

    ``train``'s labels index ``class_names`` (the data's classes; default: the model's), ``val``'s index
    ``val_class_names`` (default: ``class_names``); both are matched to the model's classes by name.
    ``names``: what to call the examples (default: their files, or ``train[INDEX]``).
    """
    from tltf.models.classifier import class_names_of
    from tltf.models.loading import load_model
    from tltf.strategies.features import feature_extractor, fingerprint, split_features

    if not hasattr(model, "layers"):
        model = load_model(model)
    try:
        model_names = class_names_of(model)
    except (ValueError, AttributeError):
        raise TltfError(f"{model.name}: not a tltf classifier (no head layer with class names)") from None
    class_names = class_names if class_names is not None else model_names
    mapping = label_map(class_names, model_names, "--data")
    val_mapping = label_map(val_class_names if val_class_names is not None else class_names, model_names, "--val")
    if len(train) < 2:
        raise TltfError(f"--data: {len(train)} training image(s); scoring needs at least two")
    if names is not None and len(names) != len(train):
        raise TltfError(f"names: {len(names)} names for {len(train)} training images")
    if len(val) < 1:
        raise TltfError("--val: no validation images")
    start = time.perf_counter()
    extractor = feature_extractor(model)
    key = fingerprint(model) if cache else None
    feats = {}
    for which, split in (("train", train), ("val", val)):
        result = split_features(model, split, batch_size, cache, extractor, key)
        if len(result.x) != len(split):
            raise TltfError(f"--{'data' if which == 'train' else 'val'}: {len(split) - len(result.x)} image(s) "
                            "could not be decoded; remove them and score again")
        feats[which] = result.x
    seconds = time.perf_counter() - start
    head = model_head(model)
    y = mapping[np.asarray(train.selected_labels, np.int64)]
    y_val = val_mapping[np.asarray(val.selected_labels, np.int64)]
    scores, info = score_features(feats["train"], y, feats["val"], y_val, head, l2=l2, refit=refit,
                                  val_loss=val_loss)
    predicted = head.logits(feats["train"]).argmax(axis=1)
    info.update(num_train=len(y), num_val=len(y_val), num_features=int(feats["train"].shape[1]),
                feature_seconds=round(seconds, 3), train_accuracy_given=float(np.mean(predicted == y)))
    return InstanceScores(names if names is not None else item_names(train), y, predicted, scores,
                          list(model_names), info)


def load_splits(data: str, val: str | None = None, val_split: float = 0.2, seed: int = 0,
                data_dir: str | None = None):
    """``(source, train, val, val_class_names)`` for a ``--data`` spec: with ``val`` (another spec) every image
    of ``data``'s training split is scored against ``val``'s training split (all of a class folder's or an
    ``.npz``'s ``x``/``y``); without it, against ``data``'s own validation split (its ``val/`` folder or
    ``x_val``), else ``val_split`` of train held out, stratified and seeded, exactly as ``tltf fit`` holds it out
    (so the images scored are the ones a fit with the same ``--val-split`` and ``--seed`` trained on)."""
    from tltf.data import load_source, stratified_split

    source = load_source(data, data_dir, "--data")
    if val is not None:
        other = load_source(val, data_dir, "--val")
        return source, source.train, other.train, other.class_names
    if source.val is not None:
        return source, source.train, source.val, source.class_names
    if not 0 < val_split < 1:
        raise TltfError(f"--val-split {val_split:g}: must be between 0 and 1 (--data {data} has no validation "
                        "split of its own; or give --val)")
    train_idx, val_idx = stratified_split(source.train.selected_labels, val_split, seed)
    return source, source.train.select(train_idx), source.train.select(val_idx), source.class_names


def score_data(model_path, data: str, val: str | None = None, val_split: float = 0.2, seed: int = 0,
               data_dir: str | None = None, **kwargs) -> tuple[InstanceScores, object]:
    """:func:`score_instances` from paths and specs (``tltf instances``): ``(scores, train split)``; the split
    gives the images of the worst ones for the contact sheet. ``kwargs``: ``l2``, ``refit``, ``val_loss``,
    ``batch_size``, ``cache``."""
    from tltf.models.loading import load_model

    model = load_model(model_path, "MODEL")
    source, train, held_out, val_names = load_splits(data, val, val_split, seed, data_dir)
    scores = score_instances(model, train, held_out, source.class_names, val_class_names=val_names, **kwargs)
    return scores, train
