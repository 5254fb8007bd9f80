"""The Python API behind the CLI: ``fit`` and ``evaluate`` (``tltf.predict``, ``tltf.export`` … hold the rest).

>>> from tltf.api import FitConfig, fit
>>> metrics = fit(FitConfig(backbone="mobilenet_v2", data="builtin:shapes", weights="none", image_size=64,
...                         epochs=6, out="runs/shapes"))                                # doctest: +SKIP
>>> metrics["stages"][0]["name"], metrics["val_accuracy"] > 0.5                          # doctest: +SKIP
('all', True)

The engine behind ``fit`` is :mod:`tltf.training` (settings, run folder, methods as plug-ins). The run folder
(``out``) holds ``model.keras``, ``metrics.json``, ``history.csv``, ``config.json``, ``curves.png``
and TensorBoard ``logs/``. While training, ``backup/`` holds the last finished epoch: running the same ``fit``
again after an interruption resumes from it.
"""

from __future__ import annotations

from pathlib import Path

from tltf.data import load_source, make_pipeline
from tltf.errors import TltfError
from tltf.models.classifier import class_names_of
from tltf.models.loading import load_model
from tltf.training import FitConfig, describe, evaluate_model, fit, load_recipe, resolve_plan

__all__ = ["FitConfig", "describe", "evaluate", "evaluate_model", "fit", "load_model", "load_recipe", "resolve_plan"]


def evaluate(model_path: str | Path, data: str, split: str = "auto", batch_size: int = 32,
             data_dir: str | None = None) -> dict:
    """Evaluate a saved model on ``data``: its test split (``auto``), ``val``, ``train`` or ``all`` images."""
    from tltf.data.manifest import is_manifest, split_spec
    from tltf.multitask.head import segments_of

    model = load_model(model_path)
    segments = segments_of(model)
    if segments and is_manifest(data) and split_spec(data)[1] is None:  # every task's column of the manifest
        data = f"{data}:{'+'.join(name for name, *_ in segments)}"
    source = load_source(data, data_dir)
    if segments and source.tasks is None:
        raise TltfError(f"--data {data}: {model_path} is a multitask model ({', '.join(n for n, *_ in segments)}); "
                        "give a CSV manifest with a label column per task")
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
    if segments:
        from tltf.multitask.evaluation import evaluate_tasks

        result = evaluate_tasks(model, make_pipeline(part, size, batch_size, cache=False), source.tasks, segments)
        result["split"] = choice
        return result
    result = evaluate_model(model, make_pipeline(part, size, batch_size, cache=False), source.class_names,
                            class_names_of(model))
    result["split"] = choice
    return result
