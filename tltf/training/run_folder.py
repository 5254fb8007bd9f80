"""The run folder (``--out``): fresh start, resume or refusal, and the files every run writes.

``out/`` holds ``model.keras``, ``metrics.json``, ``history.csv``, ``config.json``, ``curves.png`` and TensorBoard
``logs/``; while training, ``backup/`` holds the last finished epoch (``keras.callbacks.BackupAndRestore``), and
running the same settings again resumes from it. Which settings must match is declared on the settings themselves
(:func:`tltf.training.settings.changed_setting`).

A run holds an exclusive lock on its folder (``flock`` on ``out/.tltf.lock``, which records its pid) from
:meth:`RunFolder.open` until :meth:`RunFolder.close`, the folder object's end or the process's end (``kill -9``
included: the kernel drops the lock): a second run into the same folder at the same time is a one-line error.
Within one process the lock is shared, so running into the same folder again, one run after the other, works.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import weakref
from dataclasses import asdict
from pathlib import Path

from tltf.atomic import make_folder, os_reason
from tltf.errors import TltfError
from tltf.reporting import write_json
from tltf.training.settings import FitConfig, changed_setting

RUN_FILES = ("backup", "logs", "history.csv", "metrics.json", "model.keras", "config.json", "curves.png")
LOCK_FILE = ".tltf.lock"

_HELD: dict[str, list] = {}  # resolved folder -> [lock file descriptor, holders in this process, created]


def _lock(folder: Path, created: bool = False) -> str:
    """Take (or, in this process, share) the exclusive lock of ``folder``; returns the key to release it with.
    ``created``: this run made the folder, so releasing the lock removes it if nothing else was written there."""
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return key
    lock = folder / LOCK_FILE
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise TltfError(f"--out {folder}: cannot write: {os_reason(e, lock)}") from None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_pid(fd)
            os.close(fd)
            who = f"another tltf run (pid {owner})" if owner else "another tltf run"
            raise TltfError(f"--out {folder}: {who} is using this folder; wait for it to finish or use another "
                            "--out") from None
        except (ImportError, OSError):  # no flock here (another OS, a file system without locks): run unlocked
            pass
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except OSError:
            same = False
        if same:  # not a lock file that its holder removed while this process waited to open it
            break
        os.close(fd)
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = [fd, 1, created]
    return key


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _release(key: str | None) -> None:
    held = _HELD.get(key) if key else None
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    fd = held[0]
    with contextlib.suppress(OSError):  # removed while still locked, so no other run ever locks a deleted file
        lock = Path(key) / LOCK_FILE
        if os.stat(lock).st_ino == os.fstat(fd).st_ino:
            os.unlink(lock)
    os.close(fd)
    if held[2]:
        with contextlib.suppress(OSError):
            os.rmdir(key)  # only when empty: a run that failed before writing anything leaves no folder


class RunFolder:
    """``out`` of one run: :meth:`open` decides between a fresh run and a resume."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.resuming = False
        self._lock_key: str | None = None
        self._finalizer = None

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    def open(self, config: FitConfig, overwrite: bool = False) -> bool:
        """Clear it (``overwrite``), or check an interrupted run there has the same settings; True when resuming.
        A finished run is never overwritten silently. Creates the folder and locks it (see the module's notes); a
        folder that another run is using is a one-line error."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise TltfError(f"--out {out}: is a file, not a folder")
        created = not out.exists()
        make_folder(out, "--out")
        self.lock(created)
        try:
            return self._start(config, overwrite)
        except BaseException:
            self.close()
            raise

    def _start(self, config: FitConfig, overwrite: bool) -> bool:
        out = self.path
        if overwrite and out.exists():
            for name in RUN_FILES:
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            self.resuming = False
            return False
        meta, saved = self.backup / "training_metadata.json", out / "config.json"
        if meta.exists() and saved.exists():
            changed = changed_setting(read_run_json(saved, f"--out {out}"), config)
            if changed:
                key, old, new = changed
                raise TltfError(f"--out {out}: holds an interrupted run with a different {key} ({old!r} vs {new!r}); "
                                "use another --out or --overwrite")
            self.resuming = True
            return True
        if (out / "model.keras").exists():
            raise TltfError(f"--out {out}: already holds a finished run; use another --out or --overwrite")
        self.resuming = False
        return False

    def lock(self, created: bool = False) -> None:
        """Lock the folder for this run (once; :meth:`open` does it)."""
        if self._lock_key is None:
            self._lock_key = _lock(self.path, created)
            self._finalizer = weakref.finalize(self, _release, self._lock_key)

    def close(self) -> None:
        """Release the folder's lock (also done when this object goes away, and when the process ends)."""
        if self._finalizer is not None:
            self._finalizer()
        self._lock_key = self._finalizer = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def resumed_epoch(self) -> int:
        """The epoch a resumed run starts at (0 for a fresh one)."""
        meta = self.backup / "training_metadata.json"
        if not (self.resuming and meta.exists()):
            return 0
        epoch = read_run_json(meta, f"--out {self.path}").get("epoch", 0)
        return int(epoch) if isinstance(epoch, (int, float)) else 0

    def write_config(self, config: FitConfig, plan, size, **effective) -> None:
        """``config.json``: the settings, the resolved plan and input size, and what took effect (``effective``)."""
        make_folder(self.path, "--out")
        write_json(self.path / "config.json", {**asdict(config), "resolved_plan": plan.to_dict(),
                                               "image_size_hw": size, **effective})

    def discard_backup(self) -> None:
        shutil.rmtree(self.backup, ignore_errors=True)


def finished_run(folder: str | Path, config: FitConfig) -> dict | None:
    """The metrics of a finished run in ``folder`` whose results-changing settings equal ``config``'s; None when
    there is none; a one-line error when a finished run there has other settings."""
    from tltf.training.defaults import resolve_schedule

    config = resolve_schedule(config)[0]  # as the run saved it
    folder = Path(folder)
    metrics_file, saved = folder / "metrics.json", folder / "config.json"
    if not (metrics_file.exists() and (folder / "model.keras").exists() and saved.exists()):
        return None
    changed = changed_setting(read_run_json(saved, str(folder)), config)
    if changed:
        key, old, new = changed
        raise TltfError(f"{folder} holds a finished run with a different {key} ({old!r} vs {new!r}); use "
                        "--overwrite or another --out")
    return read_run_json(metrics_file, str(folder))


def read_run_json(path: Path, where: str) -> dict:
    """A run file (``config.json``, ``metrics.json``, the backup's metadata) as a dict; a one-line error when it
    was damaged by hand or by another program."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise TltfError(f"{where}: {path.name} is not readable JSON ({type(e).__name__}); use --overwrite or "
                        "another --out") from None
    if not isinstance(data, dict):
        raise TltfError(f"{where}: {path.name} is not a JSON object; use --overwrite or another --out")
    return data
