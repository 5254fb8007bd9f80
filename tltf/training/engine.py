"""The training engine: one flow for every way of training a tltf classifier.

``fit(config)`` opens the run folder (fresh, resumed or refused), reads the data, builds the classifier and its
stage plan, applies the layer-transfer settings (:mod:`tltf.strategies.layer_transfer`), lets the selected methods
(:mod:`tltf.training.methods`) set up what trains, hands the loop to the trainer, then evaluates, saves
``model.keras`` and writes ``metrics.json`` and ``curves.png``. The methods never touch the run folder, resume,
timing, history or reports: those are the engine's (:class:`Run` gives them what they need).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import keras

from tltf import backbones, distribution
from tltf.atomic import save_model
from tltf.data import Augment, load_data, load_source, make_pipeline
from tltf.errors import TltfError
from tltf.models.classifier import build_classifier
from tltf.reporting import read_history, write_json
from tltf.staging import Stage, StagePlan, preset
from tltf.staging.freezing import blocks_of
from tltf.strategies.layer_transfer import LayerTransfer, apply_layer_transfer
from tltf.training import defaults, methods
from tltf.training.callbacks import standard_callbacks
from tltf.training.evaluation import evaluate_model
from tltf.training.report import run_metrics, write_reports
from tltf.training.refit import (REFIT_BELOW, chosen_epochs, final_config, parse_refit, refit_decision,
                                 smallest_class)
from tltf.training.run_folder import RunFolder, finished_run
from tltf.training.runtime import set_precision
from tltf.training.settings import FitConfig


@dataclass
class Run:
    """One training run as the methods see it."""

    config: FitConfig
    spec: backbones.BackboneSpec
    dist: distribution.Distribution
    folder: RunFolder
    verbose: int = 1
    overwrite: bool = False
    data: object = None  # tltf.data.Source: train / val / test splits
    target: object = None  # with a "target" stream: the unlabelled target split
    target_eval: object = None  # ... and its labelled evaluation split (--target-labels-for-eval)
    model: keras.Model | None = None  # the classifier: what is saved
    train_model: keras.Model | None = None  # what is fitted (the classifier or a wrapper sharing its layers)
    plan: StagePlan | None = None
    size: tuple = ()
    train_bn: bool = False
    augment: Augment | None = None
    augment_text: str = ""
    transfer: LayerTransfer | None = None  # --freeze-until, --reinit-top, the feature-cache decision
    defaults: dict = field(default_factory=dict)  # {setting: why tltf chose its value}
    loss_terms: list = field(default_factory=list)
    objective: dict | None = None  # compile's loss and metrics when a plug-in sets them (default: the head's)
    test: dict | None = None  # set by a trainer that evaluates the test split itself

    def add_loss(self, term) -> None:
        """Add ``term(x, y, y_pred) -> scalar`` to every training step's loss."""
        self.loss_terms.append(term)

    def standard_callbacks(self, images_per_epoch: int, keep_frozen=(), staged: bool = True,
                           backup: bool = True) -> list:
        return standard_callbacks(self.folder, self.plan, images_per_epoch, tensorboard=self.config.tensorboard,
                                  verbose=self.verbose, keep_frozen=keep_frozen, staged=staged, backup=backup)


def resolve_plan(config: FitConfig, num_blocks: int) -> StagePlan:
    """The stage plan of ``config``: its ``plan`` (rescaled to ``epochs``) or the ``stage`` preset."""
    if config.plan:
        plan = (StagePlan.from_dict(config.plan, "plan") if isinstance(config.plan, dict)
                else StagePlan.from_yaml(config.plan))
        return plan.scaled(config.epochs) if config.epochs else plan
    stage = config.stage or defaults.resolve_schedule(config)[0].stage
    if stage == "prototypes":  # the imprint is the training; --epochs N fine-tunes after it
        return preset(stage, config.epochs or 0, config.learning_rate, num_blocks)
    return preset(stage, config.epochs or 6, config.learning_rate, num_blocks)


def trainer_name(config: FitConfig) -> str:
    if config.adapt != "none" or config.target_data:
        return methods.ADAPT_TRAINERS[methods.adapt_parts(config.adapt)[0]]
    return "supervised"


def fit(config: FitConfig, overwrite: bool = False, verbose: int = 1, callbacks=(), source=None) -> dict:
    """Train a classifier as ``config`` says; returns the metrics written to ``out/metrics.json``.

    ``callbacks`` are extra Keras callbacks, run after tltf's own (stages, timing, backup, CSV log). With
    ``refit`` the run is two: the hold-out run that chooses the epochs, then all labelled images
    (:mod:`tltf.training.refit`). ``source``: the data of ``config.data`` already read (a
    :class:`tltf.data.Source`, left unchanged), so that runs on the same data scan it once.
    """
    config, chosen = defaults.resolve_schedule(config.validate())  # validate: settings changed after creation
    from tltf.instances.selection import parse_selection

    if parse_selection(config.select_instances) is not None:  # train, score, drop, train again
        from tltf.instances.loop import fit_with_selection

        return fit_with_selection(fit, config, overwrite, verbose, callbacks)
    selected = methods.select(config, trainer_name(config))  # once per run's settings: plug-ins check once
    wanted, why, source = _refit_wanted(config, selected, source)
    if why:
        chosen["refit"] = why
    if not wanted:
        return _fit_once(config, overwrite, verbose, callbacks, chosen, source, selected)
    out = Path(config.out)
    holdout = replace(config, out=str(out / "holdout"), refit="off")
    held = None if overwrite else finished_run(out / "holdout", holdout)
    if held is None:  # the plug-ins chosen above: the hold-out run differs only in its folder and refit
        held = _fit_once(holdout, overwrite, verbose, callbacks, chosen, source, methods.rebind(selected, holdout))
    history = read_history(out / "holdout" / "history.csv")
    stages = json.loads((out / "holdout" / "config.json").read_text())["resolved_plan"]["stages"]
    plan = StagePlan([Stage(**stage) for stage in stages])  # as it ran (the LP's head stages already replaced)
    start = held.get("start_head") or {}  # the head a plug-in set before any epoch: 0 epochs can win
    epochs = chosen_epochs(history, (start.get("val_accuracy"), start.get("val_loss")) if start else None,
                           num_val=int(held.get("num_val") or 0))
    if verbose:
        print(f"refit: {epochs} of {plan.epochs} epochs chosen on the hold-out"
              f"{' (the starting head alone)' if epochs == 0 else ''}; training again on all labelled images",
              flush=True)
    final = final_config(config, plan, epochs, lp_applied=start.get("method") == "lp_init")
    metrics = _fit_once(final, overwrite, verbose, callbacks, chosen, source)
    row = history[epochs - 1] if 0 < epochs <= len(history) else {"val_accuracy": start.get("val_accuracy"),
                                                                  "val_loss": start.get("val_loss")}
    metrics["refit"] = {"chosen_epochs": epochs, "planned_epochs": plan.epochs, "holdout_run": str(out / "holdout"),
                        "holdout_val_accuracy": row.get("val_accuracy"), "holdout_val_loss": row.get("val_loss"),
                        "holdout_val_metrics": {k: v for k, v in row.items() if k.startswith("val_")},
                        "holdout_val_curve": [r.get("val_accuracy") for r in history],
                        "holdout_lp_val_accuracy": start.get("val_accuracy"),
                        "holdout_num_train": held["num_train"], "holdout_num_val": held["num_val"],
                        "num_train": metrics["num_train"],
                        "holdout_test_accuracy": held.get("test_accuracy")}
    metrics["val_accuracy"] = row.get("val_accuracy")  # the hold-out's estimate: no image is left to validate on
    write_json(out / "metrics.json", metrics)
    _record_settings(out, config, final)
    return metrics


def _record_settings(out: Path, config: FitConfig, final: FitConfig) -> None:
    """``config.json`` of a finished refit: the settings asked for (so that ``tltf compare`` and a second ``fit``
    recognise the run), and under ``refit_final`` those the final run took instead."""
    saved = json.loads((out / "config.json").read_text())
    asked, taken = asdict(config), asdict(final)
    saved["refit_final"] = {key: taken[key] for key in taken if taken[key] != asked[key] and key != "out"}
    saved.update(asked)
    write_json(out / "config.json", saved)


def _refit_wanted(config: FitConfig, selected: tuple, source=None) -> tuple[bool, str, object]:
    """Whether to refit, why, and the data source when it was read (given, or read to decide; None otherwise): the
    runs that follow take it instead of reading the data again. ``selected``: ``config``'s (trainer, plug-ins)."""
    if parse_refit(config.refit) == "off":
        return False, "", source
    if config.target_data or not config.val_split or parse_refit(config.refit) == "on":
        return (*refit_decision(config, 0, False), source)
    if source is None:
        trainer, extras = selected
        source = load_source(methods.data_spec(config, (trainer, *extras)), config.data_dir)
    return (*refit_decision(config, smallest_class(source.train.selected_labels), source.val is not None), source)


def _fit_once(config: FitConfig, overwrite: bool, verbose: int, callbacks, chosen: dict, source=None,
              selected: tuple | None = None) -> dict:
    """One run into ``config.out`` (see :func:`fit`); ``source``: the data already read, or None; ``selected``:
    ``config``'s (trainer, plug-ins) when they were already chosen and checked."""
    trainer, extras = selected or methods.select(config, trainer_name(config))
    spec = backbones.get(config.backbone)
    dist = distribution.setup(config.distribute, config.batch_size)  # first: multi-worker needs it before any op
    if dist.name != "none" and not trainer.distributable:
        raise TltfError(f"--distribute: the {trainer.name} trainer does not run under a distribution strategy")
    folder = RunFolder(dist.run_dir(config.out))
    folder.open(config, overwrite)
    try:
        return _train_in(folder, config, dist, spec, trainer, extras, overwrite, verbose, callbacks, chosen, source)
    finally:
        folder.close()  # the folder's lock: another process may use it now


def _train_in(folder: RunFolder, config: FitConfig, dist, spec, trainer, extras, overwrite: bool, verbose: int,
              callbacks, chosen: dict, source=None) -> dict:
    """The run itself, in an open (locked) run folder."""
    if str(config.augment).strip().lower() != "auto":
        Augment.parse(config.augment)  # validated before any data is read
    set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)

    run = Run(config, spec, dist, folder, verbose=verbose, overwrite=overwrite, defaults=dict(chosen))
    wanted = methods.data_spec(config, (trainer, *extras))
    run.data = load_data(source if source is not None else wanted, config.val_split, config.seed, config.data_dir)
    run.augment_text, why = defaults.resolve_augment(config, run.data.train)
    run.defaults.update(why)
    run.augment = Augment.parse(run.augment_text)
    for method in (trainer, *extras):
        if "target" in method.streams:
            from tltf.adapt.target import load_target

            run.target, run.target_eval = load_target(config.target_data, run.data.class_names,
                                                      config.target_labels_for_eval, config.data_dir)
            break
    for method in (trainer, *extras):
        method.data(run)
    run.train_bn = config.train_bn if config.train_bn is not None else config.weights == "none"
    features, why = defaults.resolve_features(config)
    run.defaults.update(why)
    options = {key: value for method in (trainer, *extras) for key, value in method.classifier_options().items()}
    with dist.scope():
        run.model = build_classifier(spec, run.data.class_names, config.image_size, config.weights,
                                     config.dropout, run.train_bn, features=features, **options)
    run.train_model = run.model
    run.size = tuple(run.model.input_shape[1:3])
    run.plan = dist.scale_plan(resolve_plan(config, len(blocks_of(run.model, spec))))
    if config.weights == "none" and (not run.plan.stages or run.plan.stages[0].unfreeze != "all"):
        print("warning: --weights none with a plan that starts frozen: a random backbone gives the head little to "
              "work with; --stage scratch trains everything from the start", flush=True)
    extras = [method for method in extras if method.applies(run.plan)]
    for method in (trainer, *extras):
        method.start(run)
    with dist.scope():  # --freeze-until, --reinit-top; whether the head can train on cached features
        run.transfer = apply_layer_transfer(run.model, run.plan, config, run.train_bn,
                                        distributed=config.distribute != "none",
                                        cache_allowed=trainer.name == "supervised")
    if run.transfer.feature_cache:
        trainer = methods.method_class("feature_head")(config)
    with dist.scope():  # the trainer last: it builds its graph over whatever the plug-ins wrapped (LwF's layer)
        for method in (*extras, trainer):
            method.setup(run)
    if run.loss_terms and not trainer.supports_loss_terms:
        raise TltfError(f"{', '.join(m.name for m in extras)}: adds a loss term, which the {trainer.name} "
                        "trainer does not take yet")

    own = [cb for method in extras for cb in method.callbacks(run)]
    start = time.perf_counter()
    if run.plan.epochs:
        trainer.fit(run, [*own, *callbacks])
    else:  # a plug-in did all the training (the LP head of --stage feature): nothing left to fit
        folder.write_config(config, run.plan, run.size, train_bn_effective=run.train_bn, defaults=run.defaults,
                            augment_effective="none")
        (folder.path / "history.csv").unlink(missing_ok=True)
    for method in (trainer, *extras):
        method.trained(run)
    seconds = time.perf_counter() - start

    classifier = trainer.classifier(run)
    test = run.test
    if test is None and run.data.test is not None:
        test = evaluate_model(classifier, make_pipeline(run.data.test, run.size, config.batch_size, cache=False),
                              run.data.class_names, run.data.class_names)
    history = read_history(folder.path / "history.csv")
    refuse_non_finite(history, config, folder)  # before anything marks the run finished; the backup stays
    save_model(classifier, folder.path / "model.keras")
    metrics = run_metrics(run, history, test, seconds)
    metrics["strategies"] = run.transfer.report()
    metrics["feature_cache"] = None
    metrics["methods"] = [trainer.name, *(m.name for m in extras)]
    for method in (trainer, *extras):
        for key, value in method.report(run).items():
            if key == "strategies":
                metrics["strategies"].update(value)
            else:
                metrics[key] = value
    for method in (trainer, *extras):
        head = method.start_head(run)
        if head:  # the head before any epoch (the LP, prototypes); with no epoch after it, the run's own figures
            metrics["start_head"] = {"method": method.name, "val_accuracy": head.get("val_accuracy"),
                                     "val_loss": head.get("val_loss")}
            if run.plan.epochs == 0:
                metrics["val_accuracy"] = metrics["best_val_accuracy"] = head.get("val_accuracy")
    for method in (trainer, *extras):
        method.finish(run, metrics)
    write_reports(run, metrics, title=trainer_title(run, trainer))
    folder.discard_backup()
    dist.finish(folder.path)
    return metrics


def refuse_non_finite(history: list[dict], config: FitConfig, folder: RunFolder) -> None:
    """A one-line error when an epoch's training loss was NaN or infinite (the run stopped there:
    :class:`tltf.training.callbacks.FiniteLoss`); the backup of the last finite epoch is kept for a resume."""
    from tltf.training.callbacks import non_finite_loss

    for row in history:
        bad = non_finite_loss(row)
        if bad is None:
            continue
        epoch = int(row["epoch"]) + 1
        kept = (f"{folder.backup} keeps the weights after epoch {epoch - 1}, which the same command resumes from"
                if epoch > 1 and folder.backup.exists() else "no finished epoch to resume from")
        raise TltfError(f"training stopped at epoch {epoch}: the loss became non-finite ({bad}={row[bad]}); lower "
                        f"--lr (it was {config.learning_rate:g}) and start over with --overwrite; no model was saved, "
                        f"{kept}")


def trainer_title(run: Run, trainer) -> str:
    if "target" in trainer.streams:
        return f"{run.spec.name}: {run.config.data} -> {run.config.target_data} ({run.config.adapt})"
    return f"{run.spec.name} on {run.config.data}"


def describe(config: FitConfig) -> dict:
    """The resolved settings and stage plan of ``config``, and why each default was taken, without loading data
    or building the model."""
    config, chosen = defaults.resolve_schedule(config)
    spec = backbones.get(config.backbone)
    plan = resolve_plan(config, spec.num_blocks)
    trainer, extras = methods.select(config, trainer_name(config))
    chosen.update(defaults.resolve_features(config)[1])
    if parse_refit(config.refit) == "auto":
        chosen["refit"] = (f"auto: on below {REFIT_BELOW} labelled images per class when the data has no validation "
                           "split of its own; decided when the data is read")
    if str(config.augment).strip().lower() == "auto":
        chosen["augment"] = (f"auto: {defaults.AUGMENT_COLOUR} for colour images, {defaults.AUGMENT_GREY} for grey "
                             "ones (digits and text change class when mirrored); decided when the data is read")
    extras = [method for method in extras if method.applies(plan)]
    for method in (trainer, *extras):
        chosen.update(method.note())
    return {"config": asdict(config), "groups": config.grouped(), "defaults": chosen,
            "methods": [trainer.name, *(m.name for m in extras)], "backbone_blocks": spec.num_blocks,
            "image_size": config.image_size or spec.default_size, "plan": plan.to_dict(),
            "first_epochs": plan.boundaries()}

