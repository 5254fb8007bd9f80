"""The run folder (``--out``): fresh start, resume or refusal, and the files every run writes.

``out/`` holds ``model.keras``, ``metrics.json``, ``history.csv``, ``config.json``, ``curves.png`` and TensorBoard
``logs/``; while training, ``backup/`` holds the last finished epoch (``keras.callbacks.BackupAndRestore``), and
running the same settings again resumes from it. Which settings must match is declared on the settings themselves
(:func:`tltf.training.settings.changed_setting`).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

from tltf.errors import TltfError
from tltf.reporting import write_json
from tltf.training.settings import FitConfig, changed_setting

RUN_FILES = ("backup", "logs", "history.csv", "metrics.json", "model.keras", "config.json", "curves.png")


class RunFolder:
    """``out`` of one run: :meth:`open` decides between a fresh run and a resume."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.resuming = False

    @property
    def backup(self) -> Path:
        return self.path / "backup"

    def open(self, config: FitConfig, overwrite: bool = False) -> bool:
        """Clear it (``overwrite``), or check an interrupted run there has the same settings; True when resuming.
        A finished run is never overwritten silently."""
        out = self.path
        if overwrite and out.exists():
            for name in RUN_FILES:
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
            self.resuming = False
            return False
        meta, saved = self.backup / "training_metadata.json", out / "config.json"
        if meta.exists() and saved.exists():
            changed = changed_setting(json.loads(saved.read_text()), config)
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

    def resumed_epoch(self) -> int:
        """The epoch a resumed run starts at (0 for a fresh one)."""
        meta = self.backup / "training_metadata.json"
        return int(json.loads(meta.read_text()).get("epoch", 0)) if self.resuming and meta.exists() else 0

    def write_config(self, config: FitConfig, plan, size, **effective) -> None:
        """``config.json``: the settings, the resolved plan and input size, and what took effect (``effective``)."""
        self.path.mkdir(parents=True, exist_ok=True)
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
    changed = changed_setting(json.loads(saved.read_text()), config)
    if changed:
        key, old, new = changed
        raise TltfError(f"{folder} holds a finished run with a different {key} ({old!r} vs {new!r}); use "
                        "--overwrite or another --out")
    return json.loads(metrics_file.read_text())
