"""The Keras callbacks every tltf run has: stages, timing, a stop at a non-finite loss, ``history.csv``, backup
(resume), TensorBoard.

A full disk (or any file system error) while training is a one-line error naming the file: ``history.csv`` is cut
back to its last whole row and the backup is written atomically, so the last finished epoch stays whole and the
same command resumes from it; no ``model.keras`` is written.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from tltf.atomic import make_folder, replacing, write_failed
from tltf.errors import TltfError
from tltf.reporting import write_json
from tltf.staging import StagedFineTuning
from tltf.training.run_folder import read_run_json


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
    """``BackupAndRestore`` that keeps the last epoch whose losses were finite, at ~60 ms an epoch.

    An epoch that ended on a NaN or infinite loss is not saved over the last good one, so the run resumes from the
    last good weights. The backup is every variable of the model and its optimizer (weights, BatchNorm statistics,
    random-generator states, optimizer slots and step count) in one ``latest.npz``, then
    ``training_metadata.json`` (the epoch; each variable's name and shape, in order). For MobileNetV2 with
    Adam (581 variables, 27 MB) that is ~20 ms to read the variables and ~40 ms to write them on 2 cores, where
    Keras' ``save_weights`` (an ``.h5`` file, walking the layer tree) took 0.22-0.34 s: a third of a head-only epoch.
    (A background writer measured no better: its copies compete with training for the interpreter.)

    Each file is written to a temporary file and renamed over the old one (weights first, then the metadata): a
    full disk or a kill mid-write leaves the previous backup whole (at worst newer weights under the previous epoch
    number, and the resumed run repeats that epoch). Backups of earlier versions (``latest.weights.h5``) still
    resume."""

    STATE = "latest.npz"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._state_path = os.path.join(self.backup_dir, self.STATE)

    def on_epoch_end(self, epoch, logs=None):
        if not non_finite_loss(logs):
            super().on_epoch_end(epoch, logs)

    def _variables(self) -> list:
        """The model's and its optimizer's variables, each once, in a fixed order."""
        seen, out = set(), []
        optimizer = getattr(self.model, "optimizer", None)
        for v in [*self.model.variables, *(optimizer.variables if optimizer is not None else [])]:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    def _save_model(self):
        variables = self._variables()
        arrays = {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(variables)}
        make_folder(self.backup_dir)
        with replacing(self._state_path, ".npz") as tmp:
            np.savez(tmp, **arrays)
        write_json(self._training_metadata_path, {
            "epoch": self._current_epoch, "batch": self._last_batch_seen,
            "variables": [[v.name, list(a.shape)] for v, a in zip(variables, arrays.values())]})

    def _load_model(self):
        if not os.path.exists(self._state_path):
            return super()._load_model()  # no backup, or one written by an earlier version (latest.weights.h5)
        optimizer = getattr(self.model, "optimizer", None)  # an uncompiled model has none
        if optimizer is not None and not optimizer.built:  # its slots must exist to be restored
            optimizer.build(self.model.trainable_variables)
        meta = read_run_json(Path(self._training_metadata_path), self.backup_dir)
        variables = self._variables()
        expected = [[v.name, list(v.shape)] for v in variables]
        if meta.get("variables") != expected or not isinstance(meta.get("epoch"), int):
            raise TltfError(f"{self._state_path}: this backup was written by a different model or optimizer "
                            "(its variables differ); remove the backup folder, or pass --overwrite to start over")
        with np.load(self._state_path, allow_pickle=False) as state:
            for i, v in enumerate(variables):
                v.assign(state[f"v{i}"])
        self.model._initial_epoch = meta["epoch"]


class HistoryLog(keras.callbacks.CSVLogger):
    """``history.csv`` that a full disk cannot leave with half a row: a row that fails to land is cut off again
    (the file ends at its last whole row) and the failure is a one-line error naming the file. A resumed run first
    drops a partial last line a killed run left, so its rows never run into one another."""

    def on_train_begin(self, logs=None):
        with self._named():
            if self.append:
                _drop_partial_line(self.filename)
            super().on_train_begin(logs)

    def on_epoch_end(self, epoch, logs=None):
        size = _size(self.filename)
        try:
            super().on_epoch_end(epoch, logs)
        except OSError as e:
            self._abandon(size)
            raise write_failed(self.filename, e) from None

    def _abandon(self, size: int | None) -> None:
        """Close the file (its unwritten buffer is lost) and cut it back to ``size`` bytes (its whole rows)."""
        with contextlib.suppress(OSError, ValueError):
            self.csv_file.close()
        self.csv_file, self.writer = None, None
        if size is not None:
            with contextlib.suppress(OSError):
                os.truncate(self.filename, size)

    @contextlib.contextmanager
    def _named(self):
        try:
            yield
        except OSError as e:
            raise write_failed(self.filename, e) from None


def _size(path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _drop_partial_line(path) -> None:
    """Cut ``path`` back to its last newline (a row a killed writer left half-written)."""
    try:
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)
    except FileNotFoundError:
        pass


def standard_callbacks(folder, plan, images_per_epoch: int, *, tensorboard: bool = True, verbose: int = 1,
                       keep_frozen=(), staged: bool = True, backup: bool = True) -> list:
    """Stages (``staged``), timing, a stop at a non-finite loss, ``history.csv`` (appended to on resume), backup
    (``backup``: resume; never of a non-finite epoch), TensorBoard. Announces a resume, or clears the history of an
    earlier run. The history row of an epoch is written before its backup: a backup never runs ahead of the
    history a resumed run appends to."""
    out = folder.path
    if folder.resuming:
        epoch = folder.resumed_epoch()
        stage = plan.stages[plan.stage_index_at(epoch)].name
        print(f"resuming {out} from epoch {epoch + 1}/{plan.epochs} (stage {stage})", flush=True)
    else:
        (out / "history.csv").unlink(missing_ok=True)
    callbacks = [StagedFineTuning(plan, verbose=verbose, keep_frozen=keep_frozen)] if staged else []
    callbacks += [EpochTiming(images_per_epoch), FiniteLoss(), HistoryLog(str(out / "history.csv"),
                                                                        append=folder.resuming)]
    if backup:
        callbacks.append(FiniteBackup(str(folder.backup), delete_checkpoint=False))
    if tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(out / "logs"), write_graph=False, profile_batch=0))
    return callbacks
