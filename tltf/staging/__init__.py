"""Staged fine-tuning: stage plans, block freezing, discriminative learning rates, the stage callback."""

from tltf.staging.callback import StagedFineTuning, prepare
from tltf.staging.freezing import freeze_to
from tltf.staging.optimizers import make_optimizer
from tltf.staging.plan import Stage, StagePlan, preset

__all__ = ["Stage", "StagePlan", "StagedFineTuning", "freeze_to", "make_optimizer", "prepare", "preset"]
