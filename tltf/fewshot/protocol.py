"""``tltf fewshot``: the episode protocol (:mod:`tltf.fewshot.episodes`) on a dataset's frozen-backbone features.

Every labelled image of the data (all its splits pooled: episodes draw their own support and query sets) goes
once through the frozen backbone (features cached as for ``tltf features``); the episodes then run on the features
in numpy, so 600 episodes take a second.
"""

from __future__ import annotations

import time

import numpy as np

from tltf.errors import TltfError
from tltf.fewshot.episodes import QUERIES, evaluate_episodes


def parse_shots(text) -> list[int]:
    """``"1,5"`` or ``(1, 5)`` -> ``[1, 5]``; a one-line error for anything else."""
    parts = str(text).split(",") if isinstance(text, str) else list(text)
    try:
        shots = [int(s) for s in parts if str(s).strip()]
    except ValueError:
        shots = []
    if not shots or min(shots) < 1:
        raise TltfError(f"--shots {text}: a comma-separated list of positive integers, e.g. 1,5")
    return sorted(set(shots))


def run_fewshot(data, shots=(1, 5), ways: int | None = None, episodes: int = 600, queries: int = QUERIES,
                backbone: str = "mobilenet_v2", weights: str = "imagenet", image_size: int | None = None,
                features: str = "auto", batch_size: int = 32, seed: int = 0, data_dir: str | None = None,
                verbose: bool = False) -> dict:
    """Few-shot accuracy of prototypes (and of the plain nearest class mean) for each number of ``shots``:
    ``{"results": [{"shots", "ways", "episodes", "mean", "ci95", ...}], ...}``. ``ways`` defaults to every class
    (at most 5 when there are more, the common 5-way setting). ``features`` ``auto``: multi-level for pretrained
    weights, as ``tltf fit`` reads them."""
    from tltf.data import load_data
    from tltf.strategies.features import extract_features

    if episodes < 1 or episodes > 100_000:
        raise TltfError(f"--episodes {episodes}: between 1 and 100000")
    if queries < 1:
        raise TltfError(f"--queries {queries}: at least 1")
    if features == "auto":
        features = "final" if weights == "none" else "multilevel"
    start = time.perf_counter()
    source = load_data(data, 0.0, seed, data_dir)
    feats = extract_features(source, backbone, weights, image_size, batch_size, 0.0, seed, data_dir,
                             verbose=verbose, features=features)
    x = np.concatenate([feats.x[s] for s in feats.x])
    y = np.concatenate([feats.y[s] for s in feats.y])
    classes = len(np.unique(y))
    ways = ways if ways is not None else min(5, classes)
    if ways < 2 or ways > classes:
        raise TltfError(f"--ways {ways}: between 2 and the {classes} classes of {data}")
    extracted = time.perf_counter() - start
    results = [evaluate_episodes(x, y, k, ways, episodes, queries, seed).to_dict() for k in parse_shots(shots)]
    return {"results": results, "data": str(data), "images": int(len(y)), "classes": feats.class_names,
            "backbone": feats.backbone, "weights": feats.weights, "image_size": list(feats.image_size),
            "features": features, "seconds": {"features": round(extracted, 2),
                                              "episodes": round(time.perf_counter() - start - extracted, 2)}}
