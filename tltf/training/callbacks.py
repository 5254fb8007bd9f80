"""The Keras callbacks every tltf run has: stages, timing, a stop at a non-finite loss, backup (resume),
``history.csv``, TensorBoard."""

from __future__ import annotations

import math
import time

import keras

from tltf.staging import StagedFineTuning


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


def finite(value) -> bool:
    """Whether a logged value is a finite number (None, a missing value, counts as finite)."""
    try:
        return value is None or math.isfinite(float(value))
    except (TypeError, ValueError):
        return True


def non_finite_loss(logs) -> str | None:
    """The first loss in ``logs`` (``loss``, ``val_loss``, ``domain_loss`` ...) that is NaN or infinite, or None.
    A non-finite validation loss counts too: the weights then give NaN outputs, whatever the training loss was."""
    return next((k for k, v in (logs or {}).items() if str(k).endswith("loss") and not finite(v)), None)


class FiniteLoss(keras.callbacks.Callback):
    """Stops training at the first batch (or epoch, for the validation loss) whose loss is NaN or infinite, as
    ``TerminateOnNaN`` does, so no more steps spoil the weights; the epoch's row in ``history.csv`` records the
    loss, and the engine refuses to save the run (:func:`tltf.training.engine.refuse_non_finite`)."""

    async_safe = True  # it only reads the logs and sets a flag: Keras may keep dispatching batches asynchronously

    def on_train_batch_end(self, batch, logs=None):
        if non_finite_loss(logs):
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if non_finite_loss(logs):
            self.model.stop_training = True


class FiniteBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that keeps the last epoch whose losses were finite: an epoch that ended on a NaN or
    infinite loss is not saved over it, so the run can resume from the last good weights."""

    def on_epoch_end(self, epoch, logs=None):
        if not non_finite_loss(logs):
            super().on_epoch_end(epoch, logs)


def standard_callbacks(folder, plan, images_per_epoch: int, *, tensorboard: bool = True, verbose: int = 1,
                       keep_frozen=(), staged: bool = True, backup: bool = True) -> list:
    """Stages (``staged``), timing, a stop at a non-finite loss, backup (``backup``: resume; never of a non-finite
    epoch), ``history.csv`` (appended to on resume), TensorBoard. Announces a resume, or clears the history of an
    earlier run."""
    out = folder.path
    if folder.resuming:
        epoch = folder.resumed_epoch()
        stage = plan.stages[plan.stage_index_at(epoch)].name
        print(f"resuming {out} from epoch {epoch + 1}/{plan.epochs} (stage {stage})", flush=True)
    else:
        (out / "history.csv").unlink(missing_ok=True)
    callbacks = [StagedFineTuning(plan, verbose=verbose, keep_frozen=keep_frozen)] if staged else []
    callbacks += [EpochTiming(images_per_epoch), FiniteLoss()]
    if backup:
        callbacks.append(FiniteBackup(str(folder.backup), delete_checkpoint=False))
    callbacks.append(keras.callbacks.CSVLogger(str(out / "history.csv"), append=folder.resuming))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0))
    return callbacks
