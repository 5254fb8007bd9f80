"""The Python API behind the CLI: ``fit`` and ``evaluate`` (``tltf.predict``, ``tltf.export`` … hold the rest).

>>> from tltf.api import FitConfig, fit
>>> metrics = fit(FitConfig(backbone="mobilenet_v2", data="builtin:shapes", weights="none", image_size=64,
...                         epochs=6, out="runs/shapes"))                                # doctest: +SKIP
>>> metrics["stages"][0]["name"], metrics["val_accuracy"] > 0.5                          # doctest: +SKIP
('head', True)

The run folder (``out``) holds ``model.keras``, ``metrics.json``, ``history.csv``, ``config.json``, ``curves.png``
and TensorBoard ``logs/``. While training, ``backup/`` holds the last finished epoch: running the same ``fit``
again after an interruption resumes from it.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import keras
import numpy as np

from tltf import __version__, backbones, distribution
from tltf.atomic import save_model
from tltf.data import Augment, load_data, load_source, make_pipeline
from tltf.errors import TltfError
from tltf.models.classifier import build_classifier, class_names_of
from tltf.models.head import class_probabilities, loss_and_metrics
from tltf.reporting import confusion_matrix, plot_history, read_history, write_json
from tltf.staging import StagedFineTuning, StagePlan, make_optimizer, prepare, preset
from tltf.staging.batchnorm import PreciseBatchNorm
from tltf.staging.freezing import blocks_of, freeze_to, trainable_count
from tltf.strategies.apply import Strategies, apply_strategies

# Settings that must match for an interrupted run to be resumed.
RESUME_KEYS = ("backbone", "data", "stage", "epochs", "image_size", "batch_size", "learning_rate", "seed",
               "val_split", "weights", "plan", "train_bn", "dropout", "optimizer", "distribute", "adapt",
               "target_data", "lambda_max", "gamma", "anneal_lr", "ema",
               "freeze_until", "reinit_top", "l2sp", "lwf", "lwf_temperature")


@dataclass
class FitConfig:
    """Everything ``tltf fit`` needs; the CLI fills it from flags (and recipes)."""

    data: str = "builtin:shapes"
    backbone: str = "mobilenet_v2"
    out: str = "runs/run"
    stage: str = "gradual"
    epochs: int | None = None  # None: the plan's own total, or 6 for a preset
    image_size: int | None = None  # None: the backbone's default
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    val_split: float = 0.2
    weights: str = "imagenet"
    plan: str | dict | None = None  # a YAML file or an inline {"stages": [...]}
    train_bn: bool | None = None  # None: train BN only when starting from random weights
    dropout: float = 0.2
    augment: str = "flip,crop,color"
    optimizer: str = "adam"
    clipnorm: float | None = None
    data_dir: str | None = None
    jit: bool | None = None  # None: XLA on GPU, not on CPU (compiling costs more than it saves there)
    precision: str = "float32"
    tensorboard: bool = True
    cache: bool = True
    distribute: str = "none"  # none | mirrored | multiworker (tf.distribute); batch_size is per replica
    # domain adaptation (tltf.adapt): --adapt dann|none with --target-data
    adapt: str = "none"
    target_data: str | None = None
    target_labels_for_eval: bool = False
    compare_source_only: bool = False
    lambda_max: float = 0.3  # the gradient-reversal weight's ceiling (the paper's schedule times this)
    gamma: float = 10.0  # the schedule's steepness
    anneal_lr: bool = False  # the paper's lr / (1 + 10 p) ** 0.75
    ema: str | float | None = "auto"  # weight averaging for DANN (see tltf.adapt.dann.ema_momentum)
    # transfer strategies (tltf.strategies)
    feature_cache: bool = True  # no stage trains the backbone: train the head on cached backbone features
    freeze_until: str | None = None  # block index, block or layer name: the backbone up to it stays frozen
    reinit_top: int = 0  # re-initialise the top K backbone blocks before training
    l2sp: float = 0.0  # L2-SP alpha: alpha/2 ||w - w0||^2 over the backbone weights that train
    lwf: float = 0.0  # learning without forgetting: weight of the source-output distillation loss
    lwf_temperature: float = 2.0  # its softmax temperature

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "FitConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise TltfError(f"{source}: unknown key {sorted(unknown)[0]!r}")
        return cls(**data)


class EpochTiming(keras.callbacks.Callback):
    """Adds ``seconds`` and ``images_per_s`` (training images per second) to each epoch's logs."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images = images_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self.start
        if logs is not None:
            logs["seconds"] = seconds
            logs["images_per_s"] = self.images / seconds if seconds > 0 else 0.0


def resolve_plan(config: FitConfig, num_blocks: int) -> StagePlan:
    if config.plan:
        plan = (StagePlan.from_dict(config.plan, "plan") if isinstance(config.plan, dict)
                else StagePlan.from_yaml(config.plan))
        return plan.scaled(config.epochs) if config.epochs else plan
    return preset(config.stage, config.epochs or 6, config.learning_rate, num_blocks)


def load_recipe(path: str | Path) -> dict:
    """A ``pipelines/*.yaml`` recipe: FitConfig fields (unknown keys are errors naming the key)."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise TltfError(f"--config {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TltfError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TltfError(f"--config {path}: expected a mapping of fit options")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    FitConfig.from_dict(data, source=f"--config {path}")  # validates the keys
    return data


def describe(config: FitConfig) -> dict:
    """The resolved settings and stage plan of ``config``, without loading data or building the model."""
    spec = backbones.get(config.backbone)
    plan = resolve_plan(config, spec.num_blocks)
    return {"config": asdict(config), "backbone_blocks": spec.num_blocks,
            "image_size": config.image_size or spec.default_size, "plan": plan.to_dict(),
            "first_epochs": plan.boundaries()}


def _set_precision(precision: str) -> None:
    if precision not in ("float32", "mixed", "mixed_float16", "mixed_bfloat16"):
        raise TltfError(f"--precision {precision}: choose float32, mixed (float16) or mixed_bfloat16")
    policy = {"mixed": "mixed_float16"}.get(precision, precision)
    keras.mixed_precision.set_global_policy(policy)


def _gpu_available() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def _run_state(out: Path, config: FitConfig, overwrite: bool) -> bool:
    """Decide between a fresh run and a resume; returns True when resuming."""
    backup = out / "backup" / "training_metadata.json"
    saved = out / "config.json"
    if overwrite and out.exists():
        for name in ("backup", "logs", "history.csv", "metrics.json", "model.keras", "config.json", "curves.png"):
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        return False
    if backup.exists() and saved.exists():
        previous = json.loads(saved.read_text())
        current = asdict(config)
        for key in RESUME_KEYS:
            if previous.get(key) != current.get(key):
                raise TltfError(f"--out {out}: holds an interrupted run with a different {key} "
                                f"({previous.get(key)!r} vs {current.get(key)!r}); use another --out or --overwrite")
        return True
    if (out / "model.keras").exists():
        raise TltfError(f"--out {out}: already holds a finished run; use another --out or --overwrite")
    return False


def fit(config: FitConfig, overwrite: bool = False, verbose: int = 1, callbacks=()) -> dict:
    """Train a classifier as ``config`` says; returns the metrics written to ``out/metrics.json``.

    ``callbacks`` are extra Keras callbacks, run after tltf's own (stages, timing, backup, CSV log).
    """
    if config.adapt != "none" or config.target_data:
        from tltf.adapt.fit import fit_adapted

        return fit_adapted(config, overwrite=overwrite, verbose=verbose, callbacks=callbacks)
    spec = backbones.get(config.backbone)
    dist = distribution.setup(config.distribute, config.batch_size)  # first: multi-worker needs it before any op
    out = dist.run_dir(config.out)
    resuming = _run_state(out, config, overwrite)
    augment = Augment.parse(config.augment)  # validated before any data is read
    _set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)

    data = load_data(config.data, config.val_split, config.seed, config.data_dir)
    train_bn = config.train_bn if config.train_bn is not None else config.weights == "none"
    with dist.scope():
        model = build_classifier(spec, data.class_names, config.image_size, config.weights, config.dropout,
                                 train_bn)
    size = tuple(model.input_shape[1:3])
    plan = dist.scale_plan(resolve_plan(config, len(blocks_of(model, spec))))
    if config.weights == "none" and plan.stages[0].unfreeze != "all":
        print("warning: --weights none with a plan that starts frozen: a random backbone gives the head little to "
              "work with; --stage scratch trains everything from the start", flush=True)
    with dist.scope():  # --freeze-until, --reinit-top, --lwf, --l2sp; the feature cache (tltf.strategies)
        strategy = apply_strategies(model, plan, config, train_bn, distributed=config.distribute != "none")
    if strategy.feature_cache:
        return _fit_on_features(model, strategy, config, plan, data, size, out, spec, train_bn, verbose, callbacks)
    train_model = strategy.train_model  # the classifier itself, or an LwF wrapper sharing its layers
    jit = config.jit if config.jit is not None else _gpu_available()
    with dist.scope():
        train_model.compile(optimizer=make_optimizer(config.optimizer, plan.stages[0].learning_rate,
                                                     config.clipnorm),
                            **loss_and_metrics(len(data.class_names) == 2), jit_compile=jit)
        prepare(train_model, plan, strategy.frozen)

    train = make_pipeline(data.train, size, dist.global_batch, training=True, augment=augment, seed=config.seed,
                          cache=config.cache)
    val = (make_pipeline(data.val, size, dist.global_batch, cache=config.cache) if data.val is not None
           else None)

    write_run_config(out, config, plan, size, train_bn_effective=train_bn, jit_effective=jit,
                     replicas=dist.replicas, global_batch_size=dist.global_batch, feature_cache_effective=False)
    own = run_callbacks(out, config, plan, resuming, len(data.train), verbose, strategy.frozen)
    if train_bn:  # evaluate and save with BatchNorm statistics of the final weights (tltf.staging.batchnorm)
        own.append(PreciseBatchNorm(model, train))
    start = time.perf_counter()
    warnings.filterwarnings("ignore", message="Your input ran out of data")  # unknown cardinality (ignore_errors)
    train_model.fit(train, validation_data=val, epochs=plan.epochs, callbacks=[*own, *callbacks], verbose=verbose,
                    shuffle=False)
    seconds = time.perf_counter() - start

    test = None
    if data.test is not None:
        test = evaluate_model(model, make_pipeline(data.test, size, config.batch_size, cache=False),
                              data.class_names, data.class_names)
    metrics = _finish(model, config, plan, data, size, out, spec, test, seconds, strategy)
    dist.finish(out)
    return metrics


def run_callbacks(out: Path, config: FitConfig, plan: StagePlan, resuming: bool, images_per_epoch: int,
                  verbose: int = 1, keep_frozen=()) -> list:
    """The callbacks of every tltf run: stages, timing, backup (resume), ``history.csv``, TensorBoard. Announces a
    resume, or clears the history of an earlier run."""
    if resuming:
        meta = json.loads((out / "backup" / "training_metadata.json").read_text())
        epoch = int(meta.get("epoch", 0))
        stage = plan.stages[plan.stage_index_at(epoch)].name
        print(f"resuming {out} from epoch {epoch + 1}/{plan.epochs} (stage {stage})", flush=True)
    else:
        (out / "history.csv").unlink(missing_ok=True)
    callbacks = [StagedFineTuning(plan, verbose=verbose, keep_frozen=keep_frozen), EpochTiming(images_per_epoch),
                 keras.callbacks.BackupAndRestore(str(out / "backup"), delete_checkpoint=False),
                 keras.callbacks.CSVLogger(str(out / "history.csv"), append=resuming)]
    if config.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0))
    return callbacks


def write_run_config(out: Path, config: FitConfig, plan: StagePlan, size, **effective) -> None:
    """``out/config.json``: the settings, the resolved plan and input size, and what took effect (``effective``)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**asdict(config), "resolved_plan": plan.to_dict(), "image_size_hw": size,
                                     **effective})


def _fit_on_features(model, strategy: Strategies, config, plan, data, size, out, spec, train_bn, verbose,
                     callbacks) -> dict:
    """``fit`` when no stage trains the backbone: the head trains on cached features (tltf.strategies)."""
    from tltf.strategies.head_on_features import fit_head_on_features

    write_run_config(out, config, plan, size, train_bn_effective=train_bn, jit_effective=False, replicas=1,
                     global_batch_size=config.batch_size, feature_cache_effective=True)
    shutil.rmtree(out / "backup", ignore_errors=True)  # nothing to resume: the head trains in seconds
    (out / "history.csv").unlink(missing_ok=True)
    start = time.perf_counter()
    test, report = fit_head_on_features(model, config, plan, data, out, verbose, callbacks)
    return _finish(model, config, plan, data, size, out, spec, test, time.perf_counter() - start, strategy, report)


def _finish(model, config, plan, data, size, out, spec, test, seconds, strategy: Strategies,
            feature_cache: dict | None = None) -> dict:
    """Save the model, metrics.json and curves.png of a finished run; returns the metrics."""
    save_model(model, out / "model.keras")
    history = read_history(out / "history.csv")
    metrics = _metrics(model, config, plan, data, size, history, test, seconds, strategy.frozen)
    metrics["strategies"] = strategy.report()
    metrics["feature_cache"] = feature_cache
    write_json(out / "metrics.json", metrics)
    plot_history(history, [(b, s.name) for b, s in zip(plan.boundaries(), plan.stages)],
                 out / "curves.png", title=f"{spec.name} on {config.data}")
    shutil.rmtree(out / "backup", ignore_errors=True)
    return metrics


def _metrics(model, config, plan, data, size, history, test, seconds, frozen=()) -> dict:
    blocks = blocks_of(model)
    stages = []
    for first, stage in zip(plan.boundaries(), plan.stages):
        freeze_to(model, stage.unfreeze, stage.discriminative, blocks, frozen)
        rows = [r for r in history if first <= r["epoch"] < first + stage.epochs]
        last = rows[-1] if rows else {}
        stages.append({"name": stage.name, "epochs": stage.epochs, "first_epoch": first,
                       "unfreeze": stage.unfreeze, "trainable_params": trainable_count(model),
                       "learning_rate": stage.learning_rate, "discriminative": stage.discriminative,
                       "accuracy": last.get("accuracy"), "val_accuracy": last.get("val_accuracy"),
                       "val_loss": last.get("val_loss"),
                       "images_per_s": float(np.mean([r["images_per_s"] for r in rows if r.get("images_per_s")]))
                       if rows else None})
    final = history[-1] if history else {}
    metrics = {"backbone": backbones.get(config.backbone).name, "weights": config.weights,
               "data": config.data, "image_size": list(size), "classes": list(data.class_names),
               "num_train": len(data.train), "num_val": len(data.val) if data.val is not None else 0,
               "num_test": len(data.test) if data.test is not None else 0,
               "epochs": plan.epochs, "stages": stages,
               "val_accuracy": final.get("val_accuracy"),
               "best_val_accuracy": max((r.get("val_accuracy") or 0.0 for r in history), default=None),
               "train_seconds_this_session": round(seconds, 2), "tltf_version": __version__}
    if test is not None:
        metrics["test_accuracy"] = test["accuracy"]
        metrics["test"] = test
    return metrics


# --- evaluation ------------------------------------------------------------------------------------------------

def evaluate_model(model: keras.Model, dataset, data_classes: list[str], model_classes: list[str]) -> dict:
    """Accuracy, per-class accuracy and confusion matrix of ``model`` over a batched ``(pixels, labels)`` dataset."""
    import tensorflow as tf

    mapping = _label_mapping(data_classes, model_classes)
    forward = tf.function(lambda x: model(x, training=False))  # not predict_on_batch: under tf.distribute it
    true, pred = [], []                                        # returns every replica's copy of the batch
    for x, y in dataset:
        probs = class_probabilities(np.asarray(forward(x)))
        pred.append(probs.argmax(axis=1))
        true.append(mapping[np.asarray(y)])
    true_a = np.concatenate(true) if true else np.zeros(0, int)
    pred_a = np.concatenate(pred) if pred else np.zeros(0, int)
    cm = confusion_matrix(true_a, pred_a, len(model_classes))
    per_class = {name: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None)
                 for i, name in enumerate(model_classes)}
    n = int(len(true_a))
    return {"accuracy": float((true_a == pred_a).mean()) if n else None, "n": n, "per_class": per_class,
            "classes": list(model_classes), "confusion": cm.tolist()}


def _label_mapping(data_classes: list[str], model_classes: list[str]) -> np.ndarray:
    missing = [c for c in data_classes if c not in model_classes]
    if missing:
        raise TltfError(f"--data: class {missing[0]!r} is not one of the model's classes "
                        f"({', '.join(model_classes[:10])}{'…' if len(model_classes) > 10 else ''})")
    return np.array([model_classes.index(c) for c in data_classes], dtype=np.int64)


def load_model(path: str | Path) -> keras.Model:
    """A tltf ``.keras`` model, or a one-line error naming the file."""
    import tltf  # noqa: F401  (registers custom objects)

    path = Path(path)
    if not path.exists():
        raise TltfError(f"{path}: no such model file")
    try:
        return keras.models.load_model(str(path), compile=False)
    except Exception as e:
        raise TltfError(f"{path}: not a loadable Keras model ({str(e).splitlines()[0][:150]})") from None


def evaluate(model_path: str | Path, data: str, split: str = "auto", batch_size: int = 32,
             data_dir: str | None = None) -> dict:
    """Evaluate a saved model on ``data``: its test split (``auto``), ``val``, ``train`` or ``all`` images."""
    model = load_model(model_path)
    source = load_source(data, data_dir)
    choice = split
    if split == "auto":
        choice = "test" if source.test is not None else "all"
    if choice == "all":
        part = source.train
    else:
        part = getattr(source, choice, None)
        if part is None:
            raise TltfError(f"--split {split}: {data} has no {choice} split")
    size = tuple(model.input_shape[1:3])
    result = evaluate_model(model, make_pipeline(part, size, batch_size, cache=False), source.class_names,
                            class_names_of(model))
    result["split"] = choice
    return result
