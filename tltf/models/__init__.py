"""Models: the preprocessing layer, the classification head, the classifier builder (and DANN pieces)."""

from tltf.models.backbone import Backbone
from tltf.models.gradient_reversal import GradientReversal
from tltf.models.head import ClassifierHead, class_probabilities
from tltf.models.preprocess import Preprocess

__all__ = ["Backbone", "ClassifierHead", "GradientReversal", "Preprocess", "class_probabilities"]
