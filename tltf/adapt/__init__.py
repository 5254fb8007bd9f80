"""Unsupervised domain adaptation: domain-adversarial training (DANN) of tltf classifiers.

- :mod:`tltf.adapt.dann`: the :class:`DANN` model, :func:`build_dann`, :func:`label_model`, :func:`train_dann`,
  :func:`train_source_only`.
- :mod:`tltf.adapt.schedules`: the paper's lambda warm-up and annealed learning rate, :class:`LambdaScheduler`.
- :mod:`tltf.adapt.digits`: the MNIST -> UCI digits domain pair as tltf pixels.
"""

from tltf.adapt.dann import (DANN, AdaptResult, DomainClassifier, RestoreBest, TargetEvaluation, adapt_optimizer,
                             build_dann, ema_momentum, evaluate_adaptation, label_model, train_dann,
                             train_source_only, zip_domains)
from tltf.adapt.schedules import LambdaScheduler, annealed_lr, dann_lambda

__all__ = ["DANN", "AdaptResult", "DomainClassifier", "LambdaScheduler", "RestoreBest", "TargetEvaluation",
           "adapt_optimizer", "annealed_lr", "build_dann", "dann_lambda", "ema_momentum", "evaluate_adaptation",
           "label_model", "train_dann", "train_source_only", "zip_domains"]
