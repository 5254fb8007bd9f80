"""Scale-out with ``tf.distribute``: ``tltf fit --distribute none|mirrored|multiworker``.

- ``mirrored``: :class:`tf.distribute.MirroredStrategy` over every GPU of this machine (or every logical device
  of one type, which is how the tests run it on two logical CPUs).
- ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` across machines; each worker runs the same
  ``tltf fit`` with its own ``TF_CONFIG`` (cluster and task), see the README. Only the chief (worker 0) writes
  the run folder's files, the others their own backups below it (:meth:`Distribution.run_dir`), so a restarted
  cluster resumes together. Keras 3 (3.15 measured) cannot ``fit`` under this strategy as released
  (keras-team/keras#20585); :func:`patch_keras_for_multiworker` mends the two places that fail, and only under
  this strategy.

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
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from tltf.errors import TltfError

CHOICES = ("none", "mirrored", "multiworker")


@dataclass
class Distribution:
    """The chosen ``tf.distribute`` strategy (None: the default one-device one) and its batch and learning-rate
    scaling."""

    name: str
    tf_strategy: object | None
    batch_size: int  # per replica

    @property
    def replicas(self) -> int:
        return int(self.tf_strategy.num_replicas_in_sync) if self.tf_strategy is not None else 1

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.replicas

    def scope(self):
        """Where variables are created (model build, compile, optimizer) so that they are mirrored."""
        return self.tf_strategy.scope() if self.tf_strategy is not None else contextlib.nullcontext()

    def scale_plan(self, plan):
        """``plan`` with each stage's learning rate times the number of replicas (unchanged for one replica)."""
        if self.replicas == 1:
            return plan
        return replace(plan, stages=[replace(s, learning_rate=s.learning_rate * self.replicas) for s in plan.stages])

    @property
    def is_chief(self) -> bool:
        """Whether this process writes the run folder: always, unless it is a non-chief multi-worker task (a
        ``TF_CONFIG`` left in the environment does not matter to a one-machine run)."""
        return self.name != "multiworker" or is_chief()

    def run_dir(self, out) -> Path:
        """Where this process writes its run: ``out`` for the chief; for another worker its own folder
        ``out/.workers/worker-N``, so that its checkpoints never race the chief's and a restarted cluster resumes
        every worker from the same epoch (each restores its own backup)."""
        out = Path(out)
        return out if self.is_chief else out / ".workers" / _task_name()

    def finish(self, run_dir) -> None:
        """After a finished run: a non-chief worker's folder held only what a resume needs; remove it."""
        if not self.is_chief:
            run_dir = Path(run_dir)
            shutil.rmtree(run_dir, ignore_errors=True)
            with contextlib.suppress(OSError):
                run_dir.parent.rmdir()  # .workers/, once the last worker has gone


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise TltfError("TF_CONFIG: not valid JSON") from None


def _task() -> tuple[str, int]:
    """This process's ``(type, index)`` in ``TF_CONFIG`` (``("worker", 0)`` without one)."""
    task = _tf_config().get("task", {})
    return task.get("type", "worker"), int(task.get("index", 0))


def _task_name() -> str:
    kind, index = _task()
    return f"{kind}-{index}"


def is_chief() -> bool:
    """True unless ``TF_CONFIG`` names this process as a non-chief worker (index > 0 with no chief task)."""
    kind, index = _task()
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in _tf_config().get("cluster", {}))


def _devices() -> list[str]:
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    return [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]


def keras_version() -> str:
    import keras

    return keras.__version__


def patch_keras_for_multiworker() -> None:
    """Mend Keras 3's TensorFlow trainer where it fails under :class:`tf.distribute.MultiWorkerMirroredStrategy`
    (keras-team/keras#20585; measured with Keras 3.15 and two workers on localhost). Idempotent; with any other
    strategy both functions behave exactly as Keras' own.

    1. ``fit``'s symbolic build all-reduces a ``PerReplica`` input batch only to learn its shapes; eagerly, the
       collective reduce cannot convert it and raises. The shapes of this worker's first replica are the same.
    2. Every train and test step reduces its scalar metrics with ``strategy.reduce("MEAN", v, axis=0)``; a scalar
       has no axis 0. ``axis=None`` is the mean over the replicas of every worker, which is what was meant.
    """
    import tensorflow as tf
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_tltf_multiworker_patch", False):
        return
    keras_reduce = trainer.reduce_per_replica
    keras_symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return keras_reduce(values, strategy, reduction)

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if iterator is None or strategy is None or not trainer._collective_all_reduce_multi_worker(strategy):
            return keras_symbolic_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, batches in iterator:
            data_batch = tree.map_structure(
                lambda v: (strategy.experimental_local_results(v)[0]
                           if isinstance(v, tf.distribute.DistributedValues) else v), next(batches))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    trainer.reduce_per_replica = reduce_per_replica
    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer._tltf_multiworker_patch = True


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
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        patch_keras_for_multiworker()
    return Distribution(name, strategy, batch_size)
