"""The callback that runs a :class:`StagePlan` inside one ``model.fit``.

At each epoch boundary where the plan moves to a new stage, :class:`StagedFineTuning` freezes/unfreezes blocks,
sets the stage's learning rate and per-group multipliers, and **retraces the train function**: Keras traces
``train_step`` once with the trainable variables of that moment, so flipping ``trainable`` inside a running
``fit()`` would otherwise train nothing new. The optimizer is built up front over every variable some stage of the
plan trains (:func:`prepare`), so its state survives stage changes and a resumed run restores it; variables no
stage trains (a frozen backbone under ``--stage feature``) get no optimizer slots, which would only be memory and
checkpoint weight (Adam: two copies of the backbone, written at every epoch's backup).

Resuming (``keras.callbacks.BackupAndRestore``) needs nothing special: the callback looks up the stage of whatever
epoch ``fit`` starts at.
"""

from __future__ import annotations

import keras

from tltf.staging.freezing import all_trainable_variables, blocks_of, freeze_to, trainable_count
from tltf.staging.plan import StagePlan


def plan_variables(model: keras.Model, plan: StagePlan, keep_frozen=()) -> list:
    """Every variable that some stage of ``plan`` trains, in model order (leaves the model frozen for the last
    stage)."""
    blocks = blocks_of(model)
    trained: set[int] = set()
    for stage in plan.stages:
        freeze_to(model, stage.unfreeze, blocks=blocks, keep_frozen=keep_frozen)
        trained.update(id(v) for v in model.trainable_variables)
    return [v for v in all_trainable_variables(model) if id(v) in trained]


def prepare(model: keras.Model, plan: StagePlan, keep_frozen=()) -> None:
    """Build the optimizer over every variable some stage trains (:func:`plan_variables`), then freeze for the
    first stage.

    ``keep_frozen``: backbone layers no stage trains (``--freeze-until``), as in :func:`freeze_to`.
    """
    model.optimizer.build(plan_variables(model, plan, keep_frozen))
    freeze_to(model, plan.stages[0].unfreeze, keep_frozen=keep_frozen)


class StagedFineTuning(keras.callbacks.Callback):
    """Apply the stage of each epoch: trainable blocks, learning rate, discriminative multipliers.

    ``self.log`` collects one dict per stage entered: name, first epoch, trainable parameters, learning rate.
    """

    def __init__(self, plan: StagePlan, verbose: int = 1, keep_frozen=()):
        super().__init__()
        self.plan = plan
        self.verbose = verbose
        self.keep_frozen = list(keep_frozen)  # layers no stage unfreezes (--freeze-until)
        self.current: int | None = None
        self.log: list[dict] = []

    def on_epoch_begin(self, epoch, logs=None):
        index = self.plan.stage_index_at(epoch)
        if index != self.current:
            self.enter(index, epoch)

    def enter(self, index: int, epoch: int) -> None:
        stage = self.plan.stages[index]
        model = self.model
        multipliers = freeze_to(model, stage.unfreeze, stage.discriminative, blocks_of(model), self.keep_frozen)
        optimizer = model.optimizer
        inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer under mixed precision
        inner.set_lr_multipliers(multipliers)
        inner.learning_rate.assign(stage.learning_rate)
        model.make_train_function(force=True)
        self.current = index
        entry = {"name": stage.name, "first_epoch": epoch, "epochs": stage.epochs, "unfreeze": stage.unfreeze,
                 "learning_rate": stage.learning_rate, "discriminative": stage.discriminative,
                 "trainable_params": trainable_count(model)}
        self.log.append(entry)
        if self.verbose:
            print(f"stage {index + 1}/{len(self.plan.stages)} {stage.name}: unfreeze={stage.unfreeze} "
                  f"lr={stage.learning_rate:.2e} trainable={entry['trainable_params']:,} params", flush=True)
