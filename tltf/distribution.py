"""Scale-out with ``tf.distribute``: ``tltf fit --distribute none|mirrored|multiworker``.

- ``mirrored``: :class:`tf.distribute.MirroredStrategy` over every GPU of this machine (or every logical device
  of one type, which is how the tests run it on two logical CPUs).
- ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` across machines; each worker runs the same
  ``tltf fit`` with its own ``TF_CONFIG`` (cluster and task), see the README. Only the chief (worker 0) writes
  the run folder's files; ``BackupAndRestore`` lets a restarted worker rejoin. Keras 3 up to 3.15 cannot ``fit``
  under this strategy (keras-team/keras#20585, measured with two workers on localhost), so tltf refuses it with
  that reason until a Keras release past 3.15.

``--batch-size`` is per replica: the global batch is ``batch_size x replicas``, and every stage's learning rate is
multiplied by the number of replicas (the linear scaling rule of Goyal et al., 2017), so one command line keeps
its meaning per device when the number of devices changes.

>>> dist = setup("none", batch_size=32)
>>> dist.replicas, dist.global_batch
(1, 32)
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, replace

from tltf.errors import TltfError

CHOICES = ("none", "mirrored", "multiworker")


@dataclass
class Distribution:
    """The chosen strategy (None: the default one-device strategy) and its batch and learning-rate scaling."""

    name: str
    strategy: object | None
    batch_size: int  # per replica

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync) if self.strategy is not None else 1

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.replicas

    def scope(self):
        """Where variables are created (model build, compile, optimizer) so that they are mirrored."""
        return self.strategy.scope() if self.strategy is not None else contextlib.nullcontext()

    def scale_plan(self, plan):
        """``plan`` with each stage's learning rate times the number of replicas (unchanged for one replica)."""
        if self.replicas == 1:
            return plan
        return replace(plan, stages=[replace(s, learning_rate=s.learning_rate * self.replicas) for s in plan.stages])

    @property
    def is_chief(self) -> bool:
        return is_chief()


def is_chief() -> bool:
    """True unless ``TF_CONFIG`` names this process as a non-chief worker (index > 0 with no chief task)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        raise TltfError("TF_CONFIG: not valid JSON") from None
    task = config.get("task", {})
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in config.get("cluster", {}))

def _devices() -> list[str]:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def keras_version() -> str:
    import keras

    return keras.__version__


def _keras_fit_supports_multiworker() -> bool:
    """False for the Keras 3 releases measured here (3.15: two workers on localhost fail in the first train step,
    after a first failure in fit's symbolic build; the two bugs of keras-team/keras#20585). Checked by version so
    that a fixed Keras is used as soon as it exists."""
    major, minor = (int(p) for p in keras_version().split(".")[:2])
    return (major, minor) < (3, 0) or (major, minor) > (3, 15)


def setup(name: str, batch_size: int) -> Distribution:
    """The :class:`Distribution` for ``--distribute name``; a one-line error for a bad choice or setup."""
    if name not in CHOICES:
        raise TltfError(f"--distribute {name}: choose {', '.join(CHOICES)}")
    if batch_size < 1:
        raise TltfError(f"--batch-size must be >= 1, got {batch_size}")
    if name == "none":
        return Distribution(name, None, batch_size)
    import tensorflow as tf

    if name == "mirrored":
        devices = _devices()
        strategy = tf.distribute.MirroredStrategy(devices)
    else:
        if not os.environ.get("TF_CONFIG"):
            raise TltfError("--distribute multiworker: set TF_CONFIG on every worker (cluster and task; see the "
                            "README), or use --distribute mirrored on one machine")
        if not _keras_fit_supports_multiworker():
            raise TltfError(f"--distribute multiworker: Keras {keras_version()}'s fit() cannot train under "
                            "MultiWorkerMirroredStrategy (keras-team/keras#20585: it all-reduces its scalar "
                            "metrics along axis 0); use --distribute mirrored on one machine")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    return Distribution(name, strategy, batch_size)
