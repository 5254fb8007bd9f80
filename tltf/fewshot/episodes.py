"""The N-way K-shot episode protocol of few-shot learning (Vinyals et al. 2016; Snell et al. 2017).

An episode draws ``ways`` classes, then ``shots`` support images and ``queries`` (15) query images from each,
disjoint; a classifier built from the support alone labels the queries. Accuracy is averaged over episodes and
reported with a 95 % interval (1.96 standard errors), the field's convention.

Two classifiers are scored on the same episodes:

- ``prototypes``: tltf's (:mod:`tltf.fewshot.prototypes`): features standardised with the support's own statistics
  and L2-normalised, nearest prototype (no unlabelled images used);
- ``ncm``: the plain baseline, nearest class mean of L2-normalised features (no centring).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tltf.errors import TltfError
from tltf.fewshot.prototypes import nearest_prototype, normalise, prototypes, standardiser

QUERIES = 15


@dataclass
class EpisodeResult:
    shots: int
    ways: int
    episodes: int
    queries: int
    mean: float  # prototypes (tltf)
    ci95: float
    baseline_mean: float  # nearest class mean on L2-normalised features
    baseline_ci95: float

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def sample_episode(labels: np.ndarray, ways: int, shots: int, queries: int, rng: np.random.Generator):
    """``(support, query)`` index arrays into ``labels`` and the episode's classes: ``ways`` classes with at least
    ``shots + 1`` images each, ``shots`` support and up to ``queries`` query images per class, never overlapping.
    Support and query labels are the position of the class in the returned class array."""
    labels = np.asarray(labels, np.int64)
    counts = np.bincount(labels)
    eligible = np.flatnonzero(counts >= shots + 1)
    if len(eligible) < ways:
        raise TltfError(f"--ways {ways} --shots {shots}: only {len(eligible)} classes have {shots + 1} or more "
                        "images (support plus at least one query)")
    classes = rng.choice(eligible, size=ways, replace=False)
    support, query = [], []
    for k in classes:
        members = rng.permutation(np.flatnonzero(labels == k))
        support.append(members[:shots])
        query.append(members[shots:shots + queries])
    return np.concatenate(support), np.concatenate(query), classes


def _episode_accuracy(x: np.ndarray, labels: np.ndarray, support: np.ndarray, query: np.ndarray,
                      classes: np.ndarray) -> tuple[float, float]:
    position = {int(k): i for i, k in enumerate(classes)}
    ys = np.array([position[int(k)] for k in labels[support]])
    yq = np.array([position[int(k)] for k in labels[query]])
    mean, inv_std = standardiser(x[support])
    ours = nearest_prototype(normalise(x[query], mean, inv_std),
                             prototypes(normalise(x[support], mean, inv_std), ys, len(classes)))
    plain = nearest_prototype(normalise(x[query]), prototypes(normalise(x[support]), ys, len(classes)))
    return float((ours == yq).mean()), float((plain == yq).mean())


def evaluate_episodes(features: np.ndarray, labels: np.ndarray, shots: int, ways: int, episodes: int = 600,
                      queries: int = QUERIES, seed: int = 0) -> EpisodeResult:
    """Mean accuracy and 95 % interval of prototypes and of the plain baseline over seeded episodes."""
    if shots < 1 or ways < 2 or episodes < 1 or queries < 1:
        raise TltfError(f"few-shot episodes need shots >= 1, ways >= 2, episodes >= 1 and queries >= 1 (got "
                        f"{shots}, {ways}, {episodes}, {queries})")
    x = np.asarray(features, np.float64)
    labels = np.asarray(labels, np.int64)
    rng = np.random.default_rng(seed)
    scores = np.array([_episode_accuracy(x, labels, *sample_episode(labels, ways, shots, queries, rng))
                       for _ in range(episodes)])
    mean, sd = scores.mean(axis=0), scores.std(axis=0, ddof=1) if episodes > 1 else np.zeros(2)
    ci = 1.96 * sd / np.sqrt(episodes)
    return EpisodeResult(shots, ways, episodes, queries, float(mean[0]), float(ci[0]), float(mean[1]), float(ci[1]))
