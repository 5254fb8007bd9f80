"""Atomic file writes: never a half-written model, report or plot, and a one-line error when the disk says no.

>>> with replacing("exported/model.onnx", ".onnx") as tmp:     # doctest: +SKIP
...     onnx.save(proto, tmp)

The temporary file is ``.NAME.tltf-HOST-PID-XXXXXXXX.SUFFIX`` beside the target. A writer killed with ``kill -9``
leaves it behind; the next write into that folder removes the ones whose process is gone (:func:`clean_stale`).
A file system error (the folder cannot be created, is read-only, the disk is full) becomes a :class:`TltfError`
naming the target, never the temporary file. A file and the report that describes it (an ``.onnx`` and its
``.onnx.json``) are written as a pair by :func:`replacing_together`: a report present always describes the file
beside it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import tempfile
from pathlib import Path

from tltf.errors import TltfError

_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:24]
_TEMP = re.compile(r"^\..+\.tltf-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-[A-Za-z0-9_]+(\.[A-Za-z0-9]+)+$")
#: errors of a write that ran out of room or hit a broken / read-only disk (the others are the caller's business)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def os_reason(error: OSError, path: str | Path) -> str:
    """Why ``error`` stopped a write of ``path``, in a few words that name the folder or file at fault."""
    path = Path(path)
    code = error.errno
    text = str(error)
    if code in (errno.ENOSPC,) or "No space left" in text:
        return "no space left on the device"
    if code == errno.EDQUOT or "quota exceeded" in text.lower():
        return "disk quota exceeded"
    if code == errno.EROFS:
        return "read-only file system"
    if code in (errno.ENOTDIR, errno.EEXIST):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    if code == errno.EISDIR:
        return "is a folder, not a file"
    if code in (errno.EACCES, errno.EPERM):
        folder = next((p for p in (path.parent, *path.parents) if p.exists()), path.parent)
        return f"permission denied (cannot write in {folder})"
    if code == errno.ENAMETOOLONG:
        return "file name too long"
    return (error.strerror or type(error).__name__).lower()


def write_failed(path: str | Path, error: BaseException) -> TltfError:
    """The one-line error of a failed write of ``path`` (``error``: an ``OSError`` or an error raised from one)."""
    cause, seen = error, 0
    while cause is not None and not isinstance(cause, OSError) and seen < 8:
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    reason = os_reason(cause, path) if isinstance(cause, OSError) else str(error).splitlines()[0][:200]
    return TltfError(f"{path}: cannot write: {reason}")


def is_write_error(error: BaseException) -> bool:
    """An ``OSError`` that says the disk refused a write (full, quota, read-only, I/O), or an error raised from
    one (a library that wraps it)."""
    seen = 0
    while error is not None and seen < 8:
        if isinstance(error, OSError) and (error.errno in WRITE_ERRNOS or any(
                s in str(error) for s in ("No space left", "quota exceeded", "Read-only file system"))):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def make_folder(folder: str | Path, option: str = "") -> Path:
    """``mkdir -p folder``; a one-line error (prefixed with ``option``) when it cannot be made."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        prefix = f"{option} {folder}" if option else str(folder)
        raise TltfError(f"{prefix}: cannot create the folder: {os_reason(e, folder)}") from None
    return folder


def _started(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from ``/proc``; None where that cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _owner_alive(pid: int, written: float) -> bool:
    """Whether the process that wrote a temporary file at ``written`` (its mtime) can still be writing it: ``pid``
    is alive and started before that (a pid reused by a later process does not count)."""
    if pid != os.getpid():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # alive, but someone else's
            pass
    started = _started(pid)
    return started is None or started <= written + 1.0


def clean_stale(folder: str | Path) -> list[Path]:
    """Remove the temporary files that a killed tltf left in ``folder`` (this host's, of a process that is gone);
    returns them."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if not match or match["host"] != _HOST:
            continue
        try:
            if not entry.is_file(follow_symlinks=False) or _owner_alive(int(match["pid"]),
                                                                       entry.stat(follow_symlinks=False).st_mtime):
                continue
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


_SCRATCH = re.compile(r"^tltf-(?P<kind>[a-z0-9]+)-(?P<host>[A-Za-z0-9]*)-(?P<pid>\d+)-[A-Za-z0-9_]+$")


@contextlib.contextmanager
def scratch_folder(kind: str):
    """A private temporary folder ``tltf-KIND-HOST-PID-XXXX`` in the system's temp folder, removed on exit; the
    ones a killed tltf left there (this host's, of a process that is gone) are removed first, so ``kill -9`` in
    the middle of an int8 export does not leave copies of the model behind for good."""
    import shutil

    root = tempfile.gettempdir()
    try:
        entries = list(os.scandir(root))
    except OSError:
        entries = []
    for entry in entries:
        match = _SCRATCH.match(entry.name)
        if not match or match["host"] != _HOST:
            continue
        try:
            if entry.is_dir(follow_symlinks=False) and not _owner_alive(
                    int(match["pid"]), entry.stat(follow_symlinks=False).st_mtime):
                shutil.rmtree(entry.path, ignore_errors=True)
        except OSError:
            continue
    with tempfile.TemporaryDirectory(prefix=f"tltf-{kind}-{_HOST}-{os.getpid()}-") as folder:
        yield Path(folder)


def temp_beside(path: str | Path, suffix: str) -> Path:
    """An empty temporary file in ``path``'s folder (same file system, so ``os.replace`` is atomic), with the
    permissions a plain ``open(..., "w")`` would give (``mkstemp`` alone makes 0600). Stale ones of killed writers
    in that folder are removed first."""
    path = Path(path)
    clean_stale(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tltf-{_HOST}-{os.getpid()}-", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return Path(tmp)


def _temp_for(path: Path, suffix: str) -> Path:
    """A temporary file beside ``path`` (its folder made first); a one-line error naming ``path`` when the folder
    cannot be made or written, or ``path`` is a folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_failed(path, e) from None
    if path.is_dir():
        raise TltfError(f"{path}: cannot write: is a folder, not a file")
    try:
        return temp_beside(path, suffix)
    except OSError as e:
        raise write_failed(path, e) from None


def _put(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path`` (atomic: same folder); a one-line error naming ``path``."""
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise write_failed(path, e) from None


def _retire(path: Path) -> None:
    """Remove ``path`` if it is there (an old companion file that would describe the wrong file)."""
    try:
        path.unlink(missing_ok=True)
    except OSError as e:
        raise write_failed(path, e) from None


@contextlib.contextmanager
def replacing(path: str | Path, suffix: str = ".part"):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on any failure it is removed.
    A folder that cannot be made or written, a full disk: a :class:`TltfError` naming ``path``."""
    with replacing_together(path, suffix=suffix) as (tmp,):
        yield tmp


@contextlib.contextmanager
def replacing_together(path: str | Path, *companions: str | Path, suffix: str = ".part"):
    """Yield temporary paths for ``path`` and its ``companions`` (files that describe it, such as its report); on
    success they replace their targets as a pair, on any failure all are removed and the old files stay.

    The order makes a companion never lie: the old companions are removed first, then ``path`` is renamed into
    place, then each companion. A process killed in between (``kill -9``, power) leaves the old ``path`` or the
    new one with no companion, or the new pair -- never a new ``path`` beside an old companion (its temporary
    files are removed by the next write into the folder, :func:`clean_stale`). An error inside the block names
    ``path``; a failing rename names the file it was for."""
    targets = [Path(path), *map(Path, companions)]
    temps: list[Path] = []
    try:
        for target in targets:
            temps.append(_temp_for(target, suffix))
        try:
            yield temps
        except Exception as e:
            if not isinstance(e, TltfError) and is_write_error(e):
                raise write_failed(targets[0], e) from None
            raise
        for companion in targets[1:]:
            _retire(companion)
        for tmp, target in zip(temps, targets):
            _put(tmp, target)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def save_model(model, path: str | Path) -> None:
    """``model.save`` through a temporary ``.keras`` file beside ``path``: never a half-written model."""
    with replacing(path, ".keras") as tmp:
        model.save(tmp)
