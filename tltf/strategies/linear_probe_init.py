"""LP-FT's first step (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"): before any stage trains,
the head is set to the optimum of a convex problem on the frozen backbone's features.

Multinomial logistic regression (one logistic unit for two classes) is fitted to convergence by scikit-learn's
L-BFGS on the cached training features (:func:`tltf.strategies.features.split_features`), standardised for the
solver; the inverse regularisation ``C`` is chosen by stratified, seeded k-fold cross-validation (log-loss) over a
grid, then refitted on every training image. The solution is written into the classifier's own ``Dense`` head
(un-standardised, so the model keeps taking raw features), so the staged fine-tuning that follows starts from a
head that is already good, and moves the features less (the paper's point). ``metrics.json`` records the chosen
``C``, the folds' scores and the head's training loss.

``--lp-init auto`` (the default) turns it on for pretrained weights when the plan's first stage trains the head
only; ``on``/``off`` force it.
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from tltf.errors import TltfError
from tltf.models.classifier import head_of
from tltf.staging import StagePlan
from tltf.strategies.features import feature_scale
from tltf.strategies.probe_views import stack
from tltf.training.methods import Method

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
MAX_FOLDS = 5
CV_MAX_IMAGES = 2000  # C is chosen on a stratified sample of at most this many images; the final fit uses all


def choose_c(x: np.ndarray, y: np.ndarray, seed: int = 0, grid=C_GRID) -> tuple[float, dict]:
    """The ``C`` of the best mean held-out log-loss over stratified, seeded folds (scikit-learn's
    ``LogisticRegressionCV``, warm-started along the grid); ``(C, {C: mean log-loss})``. With fewer than two
    images in some class there are no folds and the middle of the grid is taken."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    if len(y) > CV_MAX_IMAGES:
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(np.arange(len(y)), train_size=CV_MAX_IMAGES, stratify=y, random_state=seed)
        x, y = x[keep], y[keep]
    counts = np.bincount(y)
    folds = int(min(MAX_FOLDS, counts[counts > 0].min()))
    if folds < 2:
        return float(grid[len(grid) // 2]), {}
    with warnings.catch_warnings():  # 1.8's notices of 1.10's renamed attributes; pyproject pins < 1.10
        warnings.simplefilter("ignore", FutureWarning)
        search = LogisticRegressionCV(Cs=list(grid), cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                      scoring="neg_log_loss", max_iter=2000, refit=False).fit(x, y)
    losses = -np.mean(next(iter(search.scores_.values())), axis=0)  # (folds, Cs) -> per C
    scores = {float(c): float(loss) for c, loss in zip(search.Cs_, losses)}
    return min(scores, key=scores.get), scores


def fit_probe(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0, c: float | None = None):
    """``(kernel (D, K'), bias (K',), report)`` of the logistic regression on raw ``features`` (K' = 1 for two
    classes: a sigmoid unit's logit; else K softmax logits)."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(labels)
    if len(present) < 2:
        raise TltfError("--lp-init: the training split has a single class")
    mean, std = feature_scale(features)
    x = (features - mean) / std  # mean and std also un-standardise the solution
    scores = {}
    if c is None:
        c, scores = choose_c(x, labels, seed)
    model = LogisticRegression(C=c, max_iter=5000).fit(x, labels)
    coef, intercept = model.coef_, model.intercept_  # (K_present or 1, D)
    if num_classes == 2:
        w, b = coef[0], intercept[0]
        kernel, bias = (w / std)[:, None], np.array([b - np.sum(w * mean / std)])
    else:
        kernel = np.zeros((features.shape[1], num_classes), np.float64)
        bias = np.full(num_classes, -1e4 if len(present) < num_classes else 0.0)  # absent classes: never chosen
        for row, k in enumerate(model.classes_):
            kernel[:, k] = coef[row] / std
            bias[k] = intercept[row] - np.sum(coef[row] * mean / std)
    kernel, bias = kernel.astype(np.float32), bias.astype(np.float32)
    accuracy, loss = head_scores(features, labels, kernel, bias)  # the imprinted head, as the model computes it
    report = {"C": float(c), "cv_log_loss": scores, "train_log_loss": loss, "train_accuracy": accuracy,
              "iterations": int(np.max(model.n_iter_))}
    return kernel, bias, report


class LinearProbeInit(Method):
    """``--lp-init``: the head starts at the convex optimum on the frozen features (LP), then the plan runs (FT).

    The LP *is* a converged head-only stage, so the plan's leading head-only stages are dropped (``--stage
    feature`` becomes the LP alone): measured on 10 shapes per class, 12 more Adam epochs on the LP head moved it
    from 0.907 to 0.793 test accuracy (the cross-validated regularisation is lost as the weights grow).
    With a validation split the LP head's validation accuracy and loss are recorded: ``--refit`` compares them with
    every later epoch, so the hold-out can choose the LP alone.
    """

    name = "lp_init"

    @classmethod
    def wanted(cls, config) -> bool:
        return str(config.lp_init).lower() not in ("false", "none", "off")

    def check(self, config) -> None:
        if str(config.lp_init).lower() not in ("true", "false", "none", "auto", "on", "off"):
            raise TltfError(f"--lp-init {config.lp_init}: choose on, off or auto")

    def applies(self, plan) -> bool:
        """``--lp-init on``, or ``auto`` with pretrained weights and a plan whose first stage trains the head only."""
        if str(self.config.lp_init).lower() in ("on", "true"):
            return True
        return self.config.weights != "none" and bool(plan.stages) and plan.stages[0].unfreeze == 0

    def note(self) -> dict:
        from tltf.strategies.probe_views import VIEWS_WHY
        from tltf.training.settings import FitConfig

        why = {"lp_init": "on: the head is first set by logistic regression on the frozen features; it replaces "
                          "the plan's leading head-only stage(s)"}
        if self.config.lp_views == FitConfig.lp_views:
            why["lp_views"] = VIEWS_WHY
        return why

    def start(self, run) -> None:
        self.report_ = None
        self.start_weights = None  # the LP model's weights, while trained() may come back to them
        lead = 0
        while lead < len(run.plan.stages) and run.plan.stages[lead].unfreeze == 0:
            lead += 1
        self.dropped = [s.name for s in run.plan.stages[:lead]]
        run.plan = StagePlan(run.plan.stages[lead:])

    def setup(self, run) -> None:
        from tltf.strategies.features import split_features

        start = time.perf_counter()
        feats = split_features(run.model, run.data.train, run.config.batch_size, True)
        head = head_of(run.model)
        mean, std = feature_scale(feats.x)
        c, scores = choose_c((feats.x - mean) / std, feats.y, run.config.seed)
        views, views_report = self._views(run, feats, c)
        x, y = stack(feats.x, feats.y, views)
        kernel, bias, report = fit_probe(x, y, len(head.class_names), run.config.seed, c=c * len(feats.y) / len(y))
        report.update(C=float(c), cv_log_loss=scores, views=views_report)
        head.dense.kernel.assign(kernel)
        head.dense.bias.assign(bias)
        if run.data.val is not None:
            val = split_features(run.model, run.data.val, run.config.batch_size, True)
            report["val_accuracy"], report["val_loss"] = head_scores(val.x, val.y, kernel, bias)
            if run.plan.epochs and run.target is None:
                self.start_weights = run.model.get_weights()  # numpy copies
        report.update(seconds=round(time.perf_counter() - start, 2), features_cached=feats.cached,
                      num_train=int(len(feats.y)), replaced_stages=self.dropped)
        self.report_ = report
        if run.verbose:
            shown = f", val accuracy {report['val_accuracy']:.3f}" if "val_accuracy" in report else ""
            print(f"lp-init: head set by logistic regression on {len(feats.y)} images' features (C={report['C']:g}"
                  f"{shown}) in {report['seconds']:.1f}s; replaces stage(s) {', '.join(self.dropped) or '-'}",
                  flush=True)

    def _views(self, run, feats, c: float):
        """The augmented views' features when ``--lp-views`` asks for them (``auto``: small data, and only if they
        help on held-out folds), else None; and what was decided, for metrics.json."""
        from tltf.strategies.probe_views import AUTO_BELOW, VIEWS, parse_views, view_features, views_help
        from tltf.training.refit import smallest_class

        asked = parse_views(run.config.lp_views)
        if asked == 0:
            return None, {"used": 0, "why": "--lp-views off"}
        if not run.augment.enabled:
            return None, {"used": 0, "why": "--augment none: no views to make"}
        smallest = smallest_class(feats.y)
        if asked == "auto" and smallest >= AUTO_BELOW:
            return None, {"used": 0, "why": f"auto: {smallest} images in the smallest class (>= {AUTO_BELOW})"}
        count = VIEWS if asked == "auto" else asked
        views = view_features(run.model, run.data.train, run.augment, count, run.config.batch_size, run.config.seed)
        if asked != "auto":
            return views, {"used": count, "why": f"--lp-views {count}"}
        helps, folds = views_help(feats.x, feats.y, views, c, MAX_FOLDS, run.config.seed)
        verdict = "lower" if helps else "no lower"
        why = (f"auto: {count} views of each image ({run.augment_text}) give a {verdict} held-out log-loss "
               f"({folds.get('with', {}).get('log_loss', float('nan')):.3f} vs "
               f"{folds.get('without', {}).get('log_loss', float('nan')):.3f})")
        return (views if helps else None), {"used": count if helps else 0, "why": why, "folds": folds}

    def trained(self, run) -> None:
        """Fine-tuning is kept only if its last epoch beats the LP head on the validation split by more than one
        standard error (the refit's rule, :func:`tltf.training.refit.chosen_epochs`); otherwise the model goes back
        to the LP head on the untouched backbone. Not with domain adaptation (the source validation split does not
        measure what it is for)."""
        if self.start_weights is None:
            return
        from tltf.reporting import read_history
        from tltf.training.refit import chosen_epochs

        rows = [row for row in read_history(run.folder.path / "history.csv") if row.get("val_accuracy") is not None]
        if not rows:
            return
        last, num_val = rows[-1], len(run.data.val)
        keep = chosen_epochs([last], (self.report_["val_accuracy"], self.report_["val_loss"]), num_val) > 0
        self.report_["fine_tuning_kept"] = keep
        self.report_["fine_tuning_val_accuracy"] = last.get("val_accuracy")
        if not keep:
            run.model.set_weights(self.start_weights)
            if run.verbose:
                print(f"lp-init: fine-tuning's validation accuracy {last['val_accuracy']:.3f} does not beat the LP "
                      f"head's {self.report_['val_accuracy']:.3f} by one standard error of {num_val} images: the "
                      "model is the LP head", flush=True)
        self.start_weights = None

    def report(self, run) -> dict:
        return {"lp_init": self.report_}

    def finish(self, run, metrics: dict) -> None:
        if self.report_ and self.report_.get("fine_tuning_kept") is False:  # the run's figures are the LP head's
            metrics["val_accuracy"] = self.report_["val_accuracy"]

    def start_head(self, run) -> dict | None:
        return self.report_


def head_scores(features: np.ndarray, labels: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> tuple:
    """``(accuracy, mean cross-entropy)`` of the linear head ``(kernel, bias)`` on ``features``."""
    logits = features.astype(np.float64) @ kernel + bias
    if logits.shape[1] == 1:  # a sigmoid unit
        logits = np.concatenate([np.zeros_like(logits), logits], axis=1)
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    labels = np.asarray(labels, np.int64)
    return (float((log_p.argmax(axis=1) == labels).mean()),
            float(-log_p[np.arange(len(labels)), labels].mean()))
