"""Hostile outputs: a run folder or export path that cannot be written (under a file, read-only, a full disk) is a
one-line error naming the path, leaving nothing half-written; a killed writer's temporary files are cleaned up by
the next write; a run folder in use by another run is refused."""

import errno
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
from conftest import cli
from hostile import run_tltf

from tltf import atomic
from tltf.atomic import replacing
from tltf.errors import TltfError
from tltf.reporting import write_json

FIT = ["--backbone", "cnn_small", "--weights", "none", "--stage", "scratch", "--image-size", "28", "--epochs", "1",
       "--batch-size", "16", "--augment", "none", "--refit", "off", "--quiet"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tltf.data.builtin import shapes

    path = tmp_path_factory.mktemp("data") / "shapes.npz"
    x, y = shapes(36, size=28, seed=0)
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import keras

    from tltf.models.classifier import build_classifier

    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    build_classifier("cnn_small", ["a", "b", "c"], image_size=28, weights="none").save(path)
    return path


def one_error_line(result) -> str:
    """The stderr of a failed command: exit 2, exactly one line, ``error: ...``, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def temp_files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tltf-" in p.name or p.name.endswith(".part"))


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- paths that cannot be made or written --------------------------------------------------------------------

def test_fit_out_under_a_file_or_on_a_file(data, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    line = one_error_line(cli("fit", "--data", data, *FIT, "--out", blocker / "run"))
    assert line == f"error: --out {blocker / 'run'}: cannot create the folder: {blocker} is a file, not a folder"
    line = one_error_line(cli("fit", "--data", data, *FIT, "--out", blocker))
    assert line == f"error: --out {blocker}: is a file, not a folder"
    assert blocker.read_text() == "not a folder" and sorted(os.listdir(tmp_path)) == ["afile"]


def test_run_folder_in_a_read_only_place(data, tmp_path, monkeypatch):
    import pathlib

    from tltf.training.run_folder import RunFolder
    from tltf.training.settings import FitConfig

    real = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):  # what an ordinary user gets in a folder they may not write (root may)
        if self.parent == tmp_path / "ro":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, *args, **kwargs)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    out = tmp_path / "ro" / "run"
    with pytest.raises(TltfError) as e:
        RunFolder(out).open(FitConfig(data=str(data), out=str(out)))
    assert str(e.value) == f"--out {out}: cannot create the folder: permission denied (cannot write in {out.parent})"
    assert os.listdir(tmp_path / "ro") == []


def test_damaged_run_files_are_one_line_errors(data, tmp_path):
    from tltf.training.run_folder import RunFolder, finished_run
    from tltf.training.settings import FitConfig

    out = tmp_path / "run"
    (out / "backup").mkdir(parents=True)
    (out / "backup" / "training_metadata.json").write_text('{"epoch": 1}')
    (out / "config.json").write_bytes(b'{"data": "x", \xff')
    config = FitConfig(data=str(data), out=str(out))
    with pytest.raises(TltfError) as e:
        RunFolder(out).open(config)
    assert str(e.value) == (f"--out {out}: config.json is not readable JSON (UnicodeDecodeError); use --overwrite or "
                            "another --out")
    (out / "config.json").write_text("[1, 2]")
    (out / "model.keras").write_text("x")
    (out / "metrics.json").write_text("{}")
    with pytest.raises(TltfError, match=r"run: config\.json is not a JSON object; use --overwrite or another --out$"):
        finished_run(out, config)
    folder = RunFolder(out)
    assert folder.open(config, overwrite=True) is False and sorted(os.listdir(out)) == [".tltf.lock"]
    folder.close()
    assert os.listdir(out) == []


def test_export_under_a_file_or_onto_a_folder(model, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    line = one_error_line(cli("export", model, "--onnx", "--json", "--out", blocker / "m.onnx"))
    assert line == f"error: {blocker / 'm.onnx'}: cannot write: {blocker} is a file, not a folder"
    (tmp_path / "d.onnx").mkdir()  # (the CLI's --out refuses a folder itself; the writer does too)
    with pytest.raises(TltfError, match=r"d\.onnx: cannot write: is a folder, not a file$"):
        with replacing(tmp_path / "d.onnx") as tmp:
            tmp.write_text("x")
    assert sorted(os.listdir(tmp_path)) == ["afile", "d.onnx"] and os.listdir(tmp_path / "d.onnx") == []


def test_export_into_a_read_only_folder_names_the_file_not_a_temp_file(model, tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: make the refusal the kernel would give an ordinary user
        real = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and os.path.samefile(dir, folder):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, ".m.onnx.x.part"))
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    try:
        line = one_error_line(cli("export", model, "--onnx", "--json", "--out", folder / "m.onnx"))
    finally:
        folder.chmod(0o755)
    assert line == f"error: {folder / 'm.onnx'}: cannot write: permission denied (cannot write in {folder})"
    assert ".part" not in line and os.listdir(folder) == []


def test_export_onto_a_full_disk_leaves_no_file(model, tmp_path, monkeypatch):
    from tltf.export import onnx

    def half_then_full(proto, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)
        no_space()

    monkeypatch.setattr(onnx, "_save", half_then_full)
    out = tmp_path / "exported" / "m.onnx"
    line = one_error_line(cli("export", model, "--onnx", "--json", "--out", out))
    assert line == f"error: {out}: cannot write: no space left on the device"
    assert os.listdir(out.parent) == []


def test_fit_onto_a_full_disk_keeps_no_half_model(data, tmp_path, monkeypatch):
    import keras

    def half_then_full(self, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"PK\3\4 half a zip")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))  # the temp file's name, as Python says

    monkeypatch.setattr(keras.Model, "save", half_then_full)
    out = tmp_path / "run"
    line = one_error_line(cli("fit", "--data", data, *FIT, "--out", out))
    assert line == f"error: {out / 'model.keras'}: cannot write: no space left on the device"
    assert not (out / "model.keras").exists() and not (out / "metrics.json").exists() and temp_files(out) == []


def test_disk_full_mid_training_is_one_line_and_the_same_command_resumes(data, tmp_path, monkeypatch):
    """``history.csv`` fills the disk in epoch 2 (half a row lands), then, resumed, the backup in epoch 3 (half a
    weights file lands): each is exit 2 with one line naming the file, no ``model.keras``, the last whole epoch kept;
    the same command then resumes and finishes with one history row per epoch, every row whole."""
    import keras

    from tltf.reporting import read_history

    fit = ["fit", "--data", data, *[a if a != "1" else "3" for a in FIT], "--out", tmp_path / "run"]  # --epochs 3
    out = tmp_path / "run"
    real_row = keras.callbacks.CSVLogger.on_epoch_end

    def row_then_full(self, epoch, logs=None):
        if epoch == 1:
            self.csv_file.write("1,0.5")
            self.csv_file.flush()
            no_space()
        return real_row(self, epoch, logs)

    monkeypatch.setattr(keras.callbacks.CSVLogger, "on_epoch_end", row_then_full)
    line = one_error_line(cli(*fit))
    assert line == f"error: {out / 'history.csv'}: cannot write: no space left on the device"
    assert (out / "history.csv").read_text().endswith("\n") and [r["epoch"] for r in read_history(
        out / "history.csv")] == [0]
    assert _backup_epoch(out) == 1 and not (out / "model.keras").exists() and temp_files(out) == []

    monkeypatch.undo()
    with open(out / "history.csv", "a") as f:
        f.write("1,cut-short")  # a row a kill -9 cut short (not a number: a real row can start "1,0.4")
    saves, real_savez = [], np.savez

    def weights_then_full(path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:  # the resumed run's second epoch: epoch 3
            with open(path, "wb") as f:
                f.write(b"PK half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_savez(path, *args, **kwargs)

    monkeypatch.setattr(np, "savez", weights_then_full)
    line = one_error_line(cli(*fit))
    assert line == f"error: {out / 'backup' / 'latest.npz'}: cannot write: no space left on the device"
    assert _backup_epoch(out) == 2 and not (out / "model.keras").exists()
    assert not (out / "backup" / "latest.npz").read_bytes().startswith(b"PK half")
    assert temp_files(out / "backup") == []

    monkeypatch.undo()
    result = cli(*fit)
    assert result.exit_code == 0, result.output
    assert f"resuming {out} from epoch 3/3" in result.output
    assert [r["epoch"] for r in read_history(out / "history.csv")] == [0, 1, 2]
    rows = (out / "history.csv").read_text().splitlines()
    assert len({row.count(",") for row in rows}) == 1 and not any("cut-short" in row for row in rows)
    assert (out / "model.keras").is_file() and (out / "metrics.json").is_file() and not (out / "backup").exists()


def _backup_epoch(out) -> int:
    import json

    return json.loads((out / "backup" / "training_metadata.json").read_text())["epoch"]


def test_json_and_figure_writes_onto_a_full_disk(tmp_path, monkeypatch):
    import pathlib

    (tmp_path / "metrics.json").write_text('{"old": 1}\n')
    monkeypatch.setattr(pathlib.Path, "write_text", no_space)
    with pytest.raises(TltfError) as e:
        write_json(tmp_path / "metrics.json", {"new": 2})
    assert str(e.value) == f"{tmp_path / 'metrics.json'}: cannot write: no space left on the device"
    monkeypatch.undo()
    assert (tmp_path / "metrics.json").read_text() == '{"old": 1}\n' and temp_files(tmp_path) == []

    class Wrapped(RuntimeError):
        pass

    with pytest.raises(TltfError, match=r"curves\.png: cannot write: disk quota exceeded$"):
        with replacing(tmp_path / "curves.png", ".png"):
            try:
                raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
            except OSError as inner:  # a library that wraps the OSError in its own exception
                raise Wrapped("savefig failed") from inner
    with pytest.raises(ValueError, match="not a write error"):  # anything else passes through untouched
        with replacing(tmp_path / "x.json"):
            raise ValueError("not a write error")
    assert sorted(os.listdir(tmp_path)) == ["metrics.json"]


# --- temporary files of killed writers -------------------------------------------------------------------------

KILLED_WRITER = """
import os, signal, sys, types
tltf = types.ModuleType("tltf")  # tltf.atomic without tltf/__init__ (TensorFlow): a quicker child
tltf.__path__ = [sys.argv[2]]
sys.modules["tltf"] = tltf
from tltf.atomic import replacing
with replacing(sys.argv[1], ".part") as tmp:
    tmp.write_bytes(b"x" * 100_000)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    folder = tmp_path / "exported"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(folder / "m.onnx"),
                             os.path.dirname(atomic.__file__)], env=ENV, stderr=subprocess.PIPE)
    assert proc.wait(timeout=120) == -signal.SIGKILL, proc.stderr.read()
    left = temp_files(folder)
    assert len(left) == 1 and left[0].startswith(f".m.onnx.tltf-{atomic._HOST}-{proc.pid}-"), left
    assert left[0].endswith(".part") and (folder / left[0]).stat().st_size == 100_000
    assert not (folder / "m.onnx").exists()

    host = atomic._HOST
    live = folder / f".m.onnx.tltf-{host}-{os.getpid()}-abcdefgh.part"  # a write of this process, in progress
    reused = folder / f".a.keras.tltf-{host}-1-abcdefgh.keras"  # pid 1 lives, but started after this was written
    other_host = folder / f".m.onnx.tltf-{host}x-999999999-abcdefgh.part"
    users = [folder / ".notes.part", folder / ".m.onnx.abcdefgh.part"]  # not tltf's naming: never touched
    for path in (live, reused, other_host, *users):
        path.write_text("x")
    os.utime(reused, (1000, 1000))

    write_json(folder / "m.onnx.json", {"ok": True})
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in (live, other_host, *users)) + [
        "m.onnx.json"]


class Killed(BaseException):
    """What a ``kill -9`` at that moment would leave: nothing after it runs (here: only ``finally`` blocks)."""


def _pair(out) -> tuple[str | None, str | None]:
    """The SHA-256 of the ``.onnx`` at ``out`` and the one its report names (None for a missing file)."""
    import hashlib
    import json

    from tltf.export.onnx import report_path

    model = hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else None
    report = json.loads(report_path(out).read_text())["sha256"] if report_path(out).exists() else None
    return model, report


def _kill_at(monkeypatch, target) -> None:
    """Make the rename onto ``target`` the moment the process is killed."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.fspath(dst) == os.fspath(target):
            raise Killed(dst)
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(atomic.os, "replace", replace)


def test_an_export_killed_between_its_two_files_leaves_no_lying_report(model, tmp_path, monkeypatch):
    """The model and its report land as a pair: the old report goes first, then the model, then the new report.
    A kill before the model's rename keeps the old model (without a report); one between the renames leaves the
    new model without a report; never a report describing another model. A re-export replaces both."""
    from tltf.export.onnx import export_onnx, report_path

    out = tmp_path / "exported" / "m.onnx"
    first = export_onnx(model, out, opset=17)
    model_sha, report_sha = _pair(out)
    assert model_sha == report_sha == first["sha256"]

    _kill_at(monkeypatch, report_path(out))
    with pytest.raises(Killed):
        export_onnx(model, out, opset=13)  # other bytes than the opset-17 file
    monkeypatch.undo()
    assert _pair(out)[0] not in (None, model_sha) and _pair(out)[1] is None  # the new model, no report

    model_sha = export_onnx(model, out, opset=17)["sha256"]  # a re-export writes the pair again
    assert _pair(out) == (model_sha, model_sha)

    _kill_at(monkeypatch, out)
    with pytest.raises(Killed):
        export_onnx(model, out, opset=13)
    monkeypatch.undo()
    assert _pair(out) == (model_sha, None)  # the old model stays; its report went first, so it cannot lie
    assert temp_files(out.parent) == []


@pytest.fixture(scope="module")
def dead_pid():
    """The pid of a process that has exited (a writer killed with -9 looks the same to the next one)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _leftovers(folder, name: str, suffix: str, dead: int) -> tuple[list, object]:
    """A killed writer's temporary files of ``name`` in ``folder`` and one of this live process."""
    host = atomic._HOST
    folder.mkdir(parents=True, exist_ok=True)
    stale = [folder / f".{name}.tltf-{host}-{dead}-abc_1234{suffix}", folder / f".{name}.tltf-{host}-{dead}-z9{suffix}"]
    live = folder / f".{name}.tltf-{host}-{os.getpid()}-livewrite{suffix}"
    for path in (*stale, live):
        path.write_bytes(b"\0" * 4096)
    return stale, live


def _write_export(model, folder):
    from tltf.export.onnx import export_onnx

    export_onnx(model, folder / "m.onnx")


def _write_run_json(model, folder):
    write_json(folder / "metrics.json", {"ok": 1})


def _write_model(model, folder):
    import keras

    from tltf.atomic import save_model

    save_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), folder / "model.keras")


def _write_backup(model, folder):
    import keras

    from tltf.training.callbacks import FiniteBackup

    backup = FiniteBackup(str(folder), delete_checkpoint=False)
    backup.set_model(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]))
    backup.on_epoch_end(0, {"loss": 1.0})
    assert (folder / "latest.npz").is_file() and (folder / "training_metadata.json").is_file()


def _write_feature_cache(model, folder):
    from tltf.strategies import features

    features._write(folder / "codes.npz", np.zeros((2, 3), np.float32), np.zeros(2, np.int64))


#: writer: (what writes, the file it writes, its temporary files' suffix)
WRITERS = {"export": (_write_export, "m.onnx", ".part"), "run folder": (_write_run_json, "metrics.json", ".part"),
           "model": (_write_model, "model.keras", ".keras"),
           "backup": (_write_backup, "latest.npz", ".npz"),
           "feature cache": (_write_feature_cache, "codes.npz", ".npz")}


@pytest.mark.parametrize("writer", WRITERS)
def test_every_writer_removes_a_killed_writers_temp_files(writer, model, tmp_path, dead_pid):
    """Export folder, run folder (JSON, model, backup weights), feature cache: the next write there removes the
    temporary files of a writer that is gone (3.7 MB each for a killed export) and keeps a live writer's."""
    folder = tmp_path / "out"
    write, name, suffix = WRITERS[writer]
    stale, live = _leftovers(folder, name, suffix, dead_pid)
    write(model, folder)
    assert not any(path.exists() for path in stale) and live.exists() and (folder / name).is_file()


# --- one run per folder at a time -------------------------------------------------------------------------------

def test_a_folder_locked_in_this_process_refuses_a_second_process(data, tmp_path):
    from tltf.training.run_folder import LOCK_FILE, RunFolder
    from tltf.training.settings import FitConfig

    out = tmp_path / "run"
    config = FitConfig(data=str(data), out=str(out))
    first, again = RunFolder(out), RunFolder(out)
    assert first.open(config) is False and again.open(config) is False  # one process: shared, not refused
    assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    outcome = run_tltf("fit", "--data", data, *FIT, "--out", out, timeout=240)
    assert outcome.one_line_error, outcome.stderr
    assert (f"error: --out {out}: another tltf run (pid {os.getpid()}) is using this folder; wait for it to finish "
            "or use another --out") in outcome.stderr
    assert sorted(os.listdir(out)) == [LOCK_FILE]  # the refused run wrote nothing
    again.close()
    assert (out / LOCK_FILE).exists()
    first.close()
    assert not (out / LOCK_FILE).exists()


def test_two_fits_into_one_folder_at_once_and_kill_9_releases_the_lock(data, tmp_path):
    from tltf.training.run_folder import LOCK_FILE, RunFolder

    out = tmp_path / "run"
    long = [a if a != "1" else "400" for a in FIT]  # --epochs 400: still training when the second run starts
    cmd = [sys.executable, "-m", "tltf", "fit", "--data", str(data), *long, "--out", str(out)]
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and first.poll() is None and not (out / "config.json").exists():
            time.sleep(0.2)
        assert first.poll() is None, first.stderr.read()
        assert (out / LOCK_FILE).read_text() == f"{first.pid}\n"
        saved = (out / "config.json").stat().st_ino
        line = one_error_line(cli("fit", "--data", data, *FIT, "--out", out, "--overwrite"))  # this process
        assert line == (f"error: --out {out}: another tltf run (pid {first.pid}) is using this folder; wait for it "
                        "to finish or use another --out")
        assert first.poll() is None and (out / "config.json").stat().st_ino == saved  # --overwrite cleared nothing
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not (out / "model.keras").exists()
    with RunFolder(out) as folder:  # the kernel dropped the killed run's lock
        folder.lock()
        assert (out / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    assert not (out / LOCK_FILE).exists()


def test_a_killed_int8_exports_scratch_folder_is_removed_by_the_next_one(tmp_path, dead_pid, monkeypatch):
    """int8 quantization works in a private folder in the system temp folder; one left by a killed export (its
    process gone) is removed when the next scratch folder is made, a live process's is kept."""
    import tempfile

    from tltf import atomic

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / f"tltf-int8-{atomic._HOST}-{dead_pid}-abc123"
    live = tmp_path / f"tltf-int8-{atomic._HOST}-{os.getppid()}-def456"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "fp32.onnx").write_bytes(b"x" * 1024)
    with atomic.scratch_folder("int8") as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(f"tltf-int8-{atomic._HOST}-{os.getpid()}-")
        assert not stale.exists() and live.exists()
    assert not scratch.exists()
