"""Pretrained weights from elsewhere: torch ``.pth`` reading (:mod:`.pth`) and torchvision converters
(:mod:`.torchvision`) behind ``tltf weights import`` / ``tltf weights list``."""

from tltf.weights.pth import read_pth

__all__ = ["read_pth"]
