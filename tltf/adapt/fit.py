"""``tltf fit --adapt dann|none --target-data …``: domain adaptation as a tltf run.

The same run folder, stage plan, resume and reports as :func:`tltf.api.fit`, with a second input stream: labelled
source batches (``--data``) and unlabelled target batches (``--target-data``), both endless tf.data pipelines (one
epoch = as many steps as the larger of the two needs), zipped into :func:`tltf.adapt.dann.train_dann`.

- ``--adapt dann``: the DANN model (classifier + gradient reversal + domain classifier), lambda schedule, weight
  averaging (``--ema``); ``--adapt none`` with ``--target-data``: the source-only baseline under the same budget,
  with the domain classifier trained as a probe only, so both report ``domain_accuracy``.
- Target labels are read only with ``--target-labels-for-eval`` and used only to measure ``target_accuracy``
  (per epoch in history.csv, final in metrics.json). With a class-folder target and no such flag, the labels are
  ignored. The target's own test split, when it has one, is the evaluation set; otherwise its training images are
  (the transductive setting of the DANN paper's tables).
- ``model.keras`` is the label path only (pixels -> preprocess -> backbone -> head): no reversal layer, no domain
  classifier, so ``tltf export``/``predict``/``evaluate`` take it as they take any tltf model.
- ``--compare-source-only`` trains the baseline too (``OUT/source_only``, same seed, data and budget) and adds it
  to the metrics for a side-by-side table.
"""

from __future__ import annotations

import math
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import keras
import numpy as np

from tltf import __version__, backbones
from tltf.atomic import save_model
from tltf.data import Augment, load_data, load_source, make_pipeline
from tltf.data.sources import Split, unlabelled_folder
from tltf.errors import TltfError
from tltf.reporting import plot_history, read_history, write_json

FINAL_KEYS = ("target_accuracy", "source_val_accuracy", "domain_accuracy", "target_loss", "source_val_loss",
              "grl_lambda", "diverged", "target_accuracy_peak", "target_accuracy_best_epoch")


def load_target(spec: str, class_names: list[str], with_labels: bool, data_dir: str | None = None):
    """``(adapt_split, eval_split | None)`` for ``--target-data``; target labels map onto the source classes."""
    path = Path(str(spec))
    if path.is_dir() and not _has_class_dirs(path):
        if with_labels:
            raise TltfError(f"--target-labels-for-eval: {path} has no class folders, so no labels to evaluate with")
        return unlabelled_folder(path), None
    source = load_source(spec, data_dir, option="--target-data")
    if not with_labels:
        return source.train, None
    missing = [c for c in source.class_names if c not in class_names]
    if missing:
        raise TltfError(f"--target-data {spec}: class {missing[0]!r} is not one of the source classes "
                        f"({', '.join(class_names[:10])})")
    mapping = np.array([class_names.index(c) for c in source.class_names], dtype=np.int32)

    def remap(split: Split | None) -> Split | None:
        if split is None:
            return None
        make = split.make

        def make_mapped(indices):
            import tensorflow as tf

            table = tf.constant(mapping)
            return make(indices).map(lambda im, y: (im, tf.gather(table, y)))

        return Split(mapping[split.labels], make_mapped, split.indices, split.image_bytes)

    train = remap(source.train)
    return train, remap(source.test) or train


def _has_class_dirs(path: Path) -> bool:
    return any(d.is_dir() and not d.name.startswith(".") for d in path.iterdir())


def fit_adapted(config, overwrite: bool = False, verbose: int = 1, callbacks=()) -> dict:
    """Train ``config`` (a :class:`tltf.api.FitConfig` with ``target_data``) with DANN or the source-only
    baseline; returns the metrics written to ``out/metrics.json``."""
    from tltf.adapt.dann import adapt_optimizer, build_dann, ema_momentum, label_model, train_dann
    from tltf.api import (_gpu_available, _metrics, _run_state, _set_precision, evaluate_model, resolve_plan,
                          run_callbacks, write_run_config)
    from tltf.models.classifier import build_classifier
    from tltf.staging import prepare
    from tltf.staging.freezing import blocks_of

    if config.adapt not in ("dann", "none"):
        raise TltfError(f"--adapt {config.adapt}: choose dann or none")
    if not config.target_data:
        raise TltfError("--adapt dann needs --target-data (the unlabelled target images)")
    if config.distribute != "none":
        raise TltfError("--distribute: not supported with --adapt/--target-data yet (the DANN step is custom)")
    for option, value in (("--freeze-until", config.freeze_until), ("--reinit-top", config.reinit_top),
                          ("--l2sp", config.l2sp), ("--lwf", config.lwf)):
        if value:
            raise TltfError(f"{option}: not supported with --adapt/--target-data yet")
    spec = backbones.get(config.backbone)
    out = Path(config.out)
    resuming = _run_state(out, config, overwrite)
    augment = Augment.parse(config.augment)
    _set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)

    data = load_data(config.data, config.val_split, config.seed, config.data_dir)
    target, target_eval = load_target(config.target_data, data.class_names, config.target_labels_for_eval,
                                      config.data_dir)
    train_bn = config.train_bn if config.train_bn is not None else config.weights == "none"
    classifier = build_classifier(spec, data.class_names, config.image_size, config.weights, config.dropout,
                                  train_bn)
    size = tuple(classifier.input_shape[1:3])
    mode = "dann" if config.adapt == "dann" else "source_only"
    model = build_dann(classifier, mode=mode)
    plan = resolve_plan(config, len(blocks_of(model, spec)))
    batch = config.batch_size
    steps = max(math.ceil(len(data.train) / batch), math.ceil(len(target) / batch))
    model.compile(optimizer=adapt_optimizer(config.optimizer, plan.stages[0].learning_rate, config.clipnorm,
                                            ema_momentum(plan.epochs * steps, config.ema)),
                  jit_compile=config.jit if config.jit is not None else _gpu_available())
    prepare(model, plan)

    source_train = make_pipeline(data.train, size, batch, training=True, augment=augment, seed=config.seed,
                                 cache=config.cache, repeat=True)
    target_train = make_pipeline(target, size, batch, training=True, augment=augment, seed=config.seed + 1,
                                 cache=config.cache, repeat=True)
    source_val = make_pipeline(data.val, size, batch, cache=config.cache) if data.val is not None else None
    target_plain = make_pipeline(target, size, batch, cache=False)
    target_eval_ds = make_pipeline(target_eval, size, batch, cache=False) if target_eval is not None else None

    write_run_config(out, config, plan, size, train_bn_effective=train_bn, steps_per_epoch=steps,
                     num_target=len(target))
    own = run_callbacks(out, config, plan, resuming, steps * batch, verbose)
    start = time.perf_counter()
    warnings.filterwarnings("ignore", message="Your input ran out of data")  # evaluation of unknown-length data
    result = train_dann(source_train, target_train, target_eval=target_eval_ds, source_val=source_val,
                        model=model, epochs=plan.epochs, batch_size=batch, steps_per_epoch=steps,
                        learning_rate=plan.stages[0].learning_rate, gamma=config.gamma,
                        lambda_max=config.lambda_max, anneal_lr=config.anneal_lr, seed=config.seed,
                        callbacks=[*own, *callbacks], verbose=verbose, mode=mode, domain_eval=target_plain)
    seconds = time.perf_counter() - start

    classifier = label_model(model)
    test = None
    if data.test is not None:
        test = evaluate_model(classifier, make_pipeline(data.test, size, batch, cache=False), data.class_names,
                              data.class_names)
    save_model(classifier, out / "model.keras")
    history = read_history(out / "history.csv")
    metrics = _metrics(model, config, plan, data, size, history, test, seconds)
    metrics.update({k: result.metrics[k] for k in FINAL_KEYS if k in result.metrics})
    metrics.update(adapt=config.adapt, target_data=config.target_data, num_target=len(target),
                   target_labels_for_eval=bool(config.target_labels_for_eval), tltf_version=__version__)
    if "source_val_accuracy" in metrics:
        metrics["val_accuracy"] = metrics["source_val_accuracy"]  # the averaged (EMA) weights' final number
    plot_history(history, [(b, s.name) for b, s in zip(plan.boundaries(), plan.stages)], out / "curves.png",
                 title=f"{spec.name}: {config.data} -> {config.target_data} ({config.adapt})")
    shutil.rmtree(out / "backup", ignore_errors=True)
    if config.compare_source_only and config.adapt == "dann":
        baseline = fit_adapted(replace(config, adapt="none", compare_source_only=False,
                                       out=str(out / "source_only")),
                               overwrite=overwrite, verbose=verbose)
        metrics["source_only"] = {k: baseline.get(k) for k in ("target_accuracy", "source_val_accuracy",
                                                                 "domain_accuracy", "test_accuracy")}
    write_json(out / "metrics.json", metrics)
    return metrics
