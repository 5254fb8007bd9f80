"""Models: the preprocessing layer, the classification head, the classifier builder (and DANN pieces)."""

from tltf.models.backbone import Backbone
from tltf.models.head import ClassifierHead, class_probabilities
from tltf.models.preprocess import Preprocess

__all__ = ["Backbone", "ClassifierHead", "Preprocess", "class_probabilities"]
