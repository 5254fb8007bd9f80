"""Unsupervised domain adaptation of tltf classifiers: labelled source images, unlabelled target images.

- :mod:`tltf.adapt.dann`: the adaptation model (classifier + domain classifier; DANN's gradient reversal, or a
  feature discrepancy for MMD/CORAL), :func:`build_dann`, :func:`label_model`, :func:`train_dann`,
  :func:`train_source_only`.
- :mod:`tltf.adapt.discrepancy`: multi-kernel MMD (DAN) and Deep CORAL between source and target features.
- :mod:`tltf.adapt.adabn`: AdaBN, BatchNorm statistics recomputed on the target.
- :mod:`tltf.adapt.method`: ``--adapt dann|mmd|coral|none`` as trainers of the training engine.
- :mod:`tltf.adapt.selection`: label-free criteria (SND, DEV) by which ``tltf compare --adapt`` picks a method.
- :mod:`tltf.adapt.schedules`: the paper's lambda warm-up and annealed learning rate, :class:`LambdaScheduler`.
- :mod:`tltf.adapt.target`: ``--target-data`` and its evaluation labels.
- :mod:`tltf.adapt.digits`: the MNIST -> UCI digits domain pair as tltf pixels.
"""

from tltf.adapt.dann import (DANN, AdaptResult, DomainClassifier, RestoreBest, TargetEvaluation, adapt_optimizer,
                             build_dann, ema_momentum, evaluate_adaptation, label_model, train_dann,
                             train_source_only, zip_domains)
from tltf.adapt.schedules import LambdaScheduler, annealed_lr, dann_lambda

__all__ = ["DANN", "AdaptResult", "DomainClassifier", "LambdaScheduler", "RestoreBest", "TargetEvaluation",
           "adapt_optimizer", "annealed_lr", "build_dann", "dann_lambda", "ema_momentum", "evaluate_adaptation",
           "label_model", "train_dann", "train_source_only", "zip_domains"]
