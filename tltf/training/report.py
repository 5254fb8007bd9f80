"""What a finished run reports: ``metrics.json`` (per-stage figures, accuracies, timing) and ``curves.png``."""

from __future__ import annotations

import math

import numpy as np

from tltf import __version__
from tltf.models.classifier import backbone_layer
from tltf.reporting import plot_history, read_history, write_json
from tltf.staging.freezing import blocks_of, resolve_unfreeze


def stage_trainable_params(model, plan, keep_frozen=()) -> list[int]:
    """Parameters each stage of ``plan`` trains in ``model``, counted from the blocks without freezing anything:
    every layer outside the backbone, plus the stage's unfrozen top blocks less ``keep_frozen``."""
    blocks = blocks_of(model)
    capped = {id(layer) for layer in keep_frozen}
    wrapper = backbone_layer(model)

    def size(layer) -> int:
        return int(sum(math.prod(v.shape) for v in layer.weights if v.trainable))

    outside = sum(size(layer) for layer in model.layers if layer is not wrapper)
    counts = []
    for stage in plan.stages:
        n = resolve_unfreeze(stage.unfreeze, [name for name, _ in blocks])
        top = blocks[len(blocks) - n:] if n else []
        counts.append(outside + sum(size(layer) for _, layers in top for layer in layers
                                    if id(layer) not in capped))
    return counts


def run_metrics(run, history: list[dict], test: dict | None, seconds: float) -> dict:
    """The ``metrics.json`` entries every run has (methods add their own)."""
    plan, data = run.plan, run.data
    counts = stage_trainable_params(run.train_model, plan, run.transfer.frozen)
    stages = []
    for first, stage, trainable in zip(plan.boundaries(), plan.stages, counts):
        rows = [r for r in history if first <= r["epoch"] < first + stage.epochs]
        last = rows[-1] if rows else {}
        rates = [r["images_per_s"] for r in rows if r.get("images_per_s")]
        stages.append({"name": stage.name, "epochs": stage.epochs, "first_epoch": first,
                       "unfreeze": stage.unfreeze, "trainable_params": trainable,
                       "learning_rate": stage.learning_rate, "discriminative": stage.discriminative,
                       "accuracy": last.get("accuracy"), "val_accuracy": last.get("val_accuracy"),
                       "val_loss": last.get("val_loss"),
                       "images_per_s": float(np.mean(rates)) if rates else None})
    final = history[-1] if history else {}
    metrics = {"backbone": run.spec.name, "weights": run.config.weights, "data": run.config.data,
               "image_size": list(run.size), "classes": list(data.class_names),
               "num_train": len(data.train), "num_val": len(data.val) if data.val is not None else 0,
               "num_test": len(data.test) if data.test is not None else 0,
               "epochs": plan.epochs, "stages": stages,
               "val_accuracy": final.get("val_accuracy"),
               "best_val_accuracy": max((r.get("val_accuracy") or 0.0 for r in history), default=None),
               "train_seconds_this_session": round(seconds, 2), "tltf_version": __version__,
               "defaults": run.defaults}
    if test is not None:
        metrics["test_accuracy"] = test["accuracy"]
        metrics["test"] = test
    return metrics


def write_reports(run, metrics: dict, title: str) -> None:
    """``metrics.json`` and ``curves.png`` (stage boundaries marked)."""
    out = run.folder.path
    write_json(out / "metrics.json", metrics)
    plot_history(read_history(out / "history.csv"),
                 [(b, s.name) for b, s in zip(run.plan.boundaries(), run.plan.stages)], out / "curves.png",
                 title=title)
