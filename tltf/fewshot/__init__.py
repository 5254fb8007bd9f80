"""Few-shot classification from a frozen backbone: prototype classifiers imprinted into the ordinary head
(:mod:`.prototypes`), the ``--stage prototypes`` plug-in of the training engine (:mod:`.method`) and the standard
N-way K-shot episode protocol (:mod:`.episodes`)."""

from tltf.fewshot.episodes import EpisodeResult, evaluate_episodes, sample_episode
from tltf.fewshot.prototypes import imprint, nearest_prototype, normalise, prototypes

__all__ = ["EpisodeResult", "evaluate_episodes", "sample_episode", "imprint", "nearest_prototype", "normalise",
           "prototypes"]
