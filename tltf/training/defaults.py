"""Defaults that follow the data and the weights, each with the reason ``--dry-run`` and metrics.json give.

- ``--epochs`` with ``--target-data``: 10 (adaptation needs a longer budget than the 6 of a preset; measured).
- ``--stage``: ``gradual`` (head, top blocks, all) for pretrained weights; ``scratch`` (every layer from the first
  epoch) for ``--weights none``: freezing a random backbone trains a head on random features.
- ``--augment auto``: random crops and colour jitter always; horizontal flips only for colour images. A flip
  changes the class of digits and text (a mirrored 2, 3, 7 is no digit), which are grey far more often than colour;
  measured in the note of this change (``benchmarks/small_data.py`` will record it per task).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

AUGMENT_COLOUR = "flip,crop,color"
AUGMENT_GREY = "crop,color"
GREY_SAMPLE = 32
#: the epoch budget of runs with --target-data (adaptation and its source-only baseline), unless given
ADAPT_EPOCHS = 20
ADAPT_EPOCHS_WHY = ("20: domain adaptation needs longer than supervised training (MNIST -> UCI digits as raw "
                    "folders, cnn_small, target accuracy over seeds 0-2: at 6 epochs mmd +3.5 points over "
                    "source-only and dann -2.3; at 10 epochs mmd +7 and dann +2.4 (+2.6 over 5 seeds); at 20 "
                    "epochs dann 0.908 vs source-only 0.840 (+6.8), source-only no better than at 10 (0.842)")


def resolve_schedule(config) -> tuple[object, dict]:
    """``config`` with ``stage`` (and, for domain adaptation, ``epochs``) set, and ``{setting: reason}`` for each
    value tltf chose."""
    chosen: dict = {}
    if config.epochs is None and not config.plan and config.target_data:
        config = replace(config, epochs=ADAPT_EPOCHS)
        chosen["epochs"] = ADAPT_EPOCHS_WHY
    if config.stage is not None or config.plan:
        return config, chosen
    if config.weights == "none":
        return replace(config, stage="scratch"), {**chosen, "stage": (
            "scratch: --weights none has no pretrained features to protect, so every layer trains from the first "
            "epoch")}
    return replace(config, stage="gradual"), {
        **chosen, "stage": "gradual: pretrained weights; the head learns first, then the top blocks, then all"}


def resolve_features(config) -> tuple[str, dict]:
    """The head's features for ``--features auto``: multi-level for pretrained weights (see
    :func:`tltf.models.classifier.multilevel_taps` for the measurements), the network's output for random ones."""
    if config.features != "auto":
        return config.features, {}
    if config.weights == "none":
        return "final", {"features": "final: random weights, no pretrained intermediate features to read"}
    return "multilevel", {"features": "multilevel: pooled outputs of the top half of the blocks as well as the last "
                                      "(MNIST 10/class linear probe 0.826 -> 0.878, 10 shapes/class 0.880 -> 0.907)"}


def is_grey(split, sample: int = GREY_SAMPLE) -> bool | None:
    """Whether the first ``sample`` images of ``split`` have equal R, G and B (None: none could be read)."""
    try:
        images = [np.asarray(image) for image, _ in split.select(np.arange(min(sample, len(split)))).dataset()]
    except Exception:  # unreadable or odd data: decide nothing here, the pipeline reports it
        return None
    if not images:
        return None
    for image in images:
        if image.ndim == 3 and image.shape[-1] >= 3 and not (
                np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])):
            return False
    return True


def resolve_augment(config, train_split) -> tuple[str, dict]:
    """The augmentation to use for ``--augment auto`` (and the reason), or the one given."""
    if str(config.augment).strip().lower() != "auto":
        return config.augment, {}
    grey = is_grey(train_split)
    if grey:
        return AUGMENT_GREY, {"augment": f"{AUGMENT_GREY}: grey images (digits, text) change class when mirrored, "
                                        "so no flips"}
    return AUGMENT_COLOUR, {"augment": f"{AUGMENT_COLOUR}: colour images; a mirrored photo keeps its class"}
