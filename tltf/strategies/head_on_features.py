"""Fast feature extraction inside ``tltf fit``: when no stage trains the backbone, train the classifier's own head
on cached backbone features.

The backbone (BatchNorm in inference mode, frozen) is a fixed function, so each image's pooled features are
computed once (:func:`tltf.strategies.features.split_features`, cached on disk) and the head layer of the
classifier -- the very layer object, so ``model.keras`` afterwards is the full model with the trained head -- is
trained on them with the run's optimizer, loss, learning rates per stage, batch size and shuffling seed. The head
pools a 4-D feature map itself; given pooled features it skips the pooling, so the function trained is the same.
Augmentation cannot apply to features computed once (``fit`` says so). Epochs cost milliseconds instead of a
backbone pass over every image: see ``benchmarks/feature_cache.py`` for the measured speed-up and accuracy.
"""

from __future__ import annotations

import time
from pathlib import Path

import keras
import numpy as np

from tltf.models.classifier import head_of
from tltf.models.head import loss_and_metrics
from tltf.staging import make_optimizer
from tltf.training.callbacks import EpochTiming
from tltf.training.evaluation import evaluate_model
from tltf.training.loss_terms import with_loss_terms
from tltf.training.methods import Method

_STEPS_PER_EXECUTION = 16


class StageRates(keras.callbacks.Callback):
    """Set each stage's learning rate at its first epoch (all stages train the head only)."""

    def __init__(self, plan, trainable: int, verbose: int = 1):
        super().__init__()
        self.plan = plan
        self.trainable = trainable
        self.verbose = verbose
        self.current = None

    def on_epoch_begin(self, epoch, logs=None):
        index = self.plan.stage_index_at(epoch)
        if index == self.current:
            return
        stage = self.plan.stages[index]
        self.model.optimizer.learning_rate.assign(stage.learning_rate)
        self.current = index
        if self.verbose:
            print(f"stage {index + 1}/{len(self.plan.stages)} {stage.name}: unfreeze=0 lr={stage.learning_rate:.2e} "
                  f"trainable={self.trainable:,} params (on cached features)", flush=True)


class FeatureHead(Method):
    """The engine's trainer when no stage trains the backbone: the classifier's head on cached features."""

    name = "feature_head"
    trains = True

    def fit(self, run, callbacks: list) -> None:
        run.folder.write_config(run.config, run.plan, run.size, train_bn_effective=run.train_bn,
                                jit_effective=False, replicas=1, global_batch_size=run.config.batch_size,
                                feature_cache_effective=True, augment_effective="none", defaults=run.defaults)
        run.folder.discard_backup()  # nothing to resume: the head trains in seconds
        (run.folder.path / "history.csv").unlink(missing_ok=True)
        run.test, self.cache_report = fit_head_on_features(run.model, run.config, run.plan, run.data, run.folder.path,
                                                           run.verbose, callbacks, run.loss_terms, run.objective)

    def report(self, run) -> dict:
        return {"feature_cache": self.cache_report}


def fit_head_on_features(model: keras.Model, config, plan, data, out: Path, verbose: int = 1,
                         callbacks=(), loss_terms=(), objective: dict | None = None) -> tuple[dict | None, dict]:
    """Train ``model``'s head on cached features of ``data``; writes ``out/history.csv`` (and TensorBoard logs).

    ``objective``: ``compile``'s loss and metrics when a plug-in set them (``run.objective``).
    Returns the test evaluation (``None`` without a test split) and the ``feature_cache`` report for
    ``metrics.json``: per split the number of images, whether it came from the cache and the seconds spent.
    """
    import tensorflow as tf

    from tltf.strategies.features import feature_extractor, fingerprint, split_features

    start = time.perf_counter()
    extractor = feature_extractor(model)
    key = fingerprint(model)
    splits = {name: split for name, split in (("train", data.train), ("val", data.val), ("test", data.test))
              if split is not None}
    feats = {name: split_features(model, split, config.batch_size, True, extractor, key)
             for name, split in splits.items()}
    extract_seconds = time.perf_counter() - start
    if verbose:
        parts = ", ".join(f"{name} {len(f.y)} ({'cached' if f.cached else 'computed'})" for name, f in feats.items())
        print(f"features: {parts} in {extract_seconds:.1f}s", flush=True)

    head = head_of(model)
    inputs = keras.Input((feats["train"].x.shape[1],), name="features")
    head_model = with_loss_terms(keras.Model(inputs, head(inputs), name="head_on_features"), loss_terms)
    head_model.compile(optimizer=make_optimizer(config.optimizer, plan.stages[0].learning_rate, config.clipnorm),
                       **(objective or loss_and_metrics(len(data.class_names) == 2)),
                       steps_per_execution=_STEPS_PER_EXECUTION)  # same steps, fewer Python round trips

    def dataset(name, training=False):
        f = feats[name]
        ds = tf.data.Dataset.from_tensor_slices((f.x, f.y.astype(np.int32)))
        if training:  # the same shuffle as the image pipeline's (buffer, seed), so the same batches
            ds = ds.shuffle(min(len(f.y), 10_000), seed=config.seed, reshuffle_each_iteration=True)
        return ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)

    trainable = int(sum(np.prod(v.shape) for v in head_model.trainable_weights))
    own = [StageRates(plan, trainable, verbose), EpochTiming(len(feats["train"].y)),
           keras.callbacks.CSVLogger(str(out / "history.csv"))]
    if config.tensorboard:
        own.append(keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0))
    fit_start = time.perf_counter()
    head_model.fit(dataset("train", training=True), validation_data=dataset("val") if "val" in feats else None,
                   epochs=plan.epochs, callbacks=own + list(callbacks), verbose=verbose, shuffle=False)
    train_seconds = time.perf_counter() - fit_start
    test = None
    if "test" in feats:
        test = evaluate_model(head_model, dataset("test"), data.class_names, data.class_names)
    report = {"used": True, "extract_seconds": round(extract_seconds, 3), "head_seconds": round(train_seconds, 3),
              "splits": {name: {"n": len(f.y), "cached": f.cached, "seconds": round(f.seconds, 3)}
                         for name, f in feats.items()},
              "augment_applied": False}
    return test, report
