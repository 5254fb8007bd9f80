"""The Keras callbacks every tltf run has: stages, timing, backup (resume), ``history.csv``, TensorBoard."""

from __future__ import annotations

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


def standard_callbacks(folder, plan, images_per_epoch: int, *, tensorboard: bool = True, verbose: int = 1,
                       keep_frozen=(), staged: bool = True, backup: bool = True) -> list:
    """Stages (``staged``), timing, backup (``backup``: resume), ``history.csv`` (appended to on resume),
    TensorBoard. Announces a resume, or clears the history of an earlier run."""
    out = folder.path
    if folder.resuming:
        epoch = folder.resumed_epoch()
        stage = plan.stages[plan.stage_index_at(epoch)].name
        print(f"resuming {out} from epoch {epoch + 1}/{plan.epochs} (stage {stage})", flush=True)
    else:
        (out / "history.csv").unlink(missing_ok=True)
    callbacks = [StagedFineTuning(plan, verbose=verbose, keep_frozen=keep_frozen)] if staged else []
    callbacks.append(EpochTiming(images_per_epoch))
    if backup:
        callbacks.append(keras.callbacks.BackupAndRestore(str(folder.backup), delete_checkpoint=False))
    callbacks.append(keras.callbacks.CSVLogger(str(out / "history.csv"), append=folder.resuming))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0))
    return callbacks
