"""The DANN paper's schedules: the gradient-reversal weight lambda and the annealed learning rate.

With ``p`` the training progress, from 0 at the first step to 1 at the last (Ganin et al., arXiv 1505.07818, §5.2.2):

- ``lambda_p = lambda_max * (2 / (1 + exp(-gamma * p)) - 1)``, ``gamma = 10``: the domain signal reaching the features
  starts at 0 (while the domain classifier is still random) and rises to ``lambda_max``: a warm-up;
- ``mu_p = mu_0 / (1 + alpha * p) ** beta``, ``alpha = 10``, ``beta = 0.75``: the learning rate falls to ~18 % of
  ``mu_0``.

:class:`LambdaScheduler` applies both once per training step, with ``p = step / total_steps`` where ``step`` is the
optimizer's iteration count, so a run resumed by ``keras.callbacks.BackupAndRestore`` carries on where it stopped.

>>> round(dann_lambda(0.0), 3), round(dann_lambda(0.5), 3), round(dann_lambda(1.0), 3)
(0.0, 0.987, 1.0)
>>> round(annealed_lr(1.0, 0.01), 5)
0.00166
"""

from __future__ import annotations

import math

import keras

from tltf.models.gradient_reversal import reversal_layers


def dann_lambda(p: float, gamma: float = 10.0, lambda_max: float = 1.0) -> float:
    """``lambda_max * (2 / (1 + exp(-gamma p)) - 1)``, with ``p`` clipped to [0, 1]."""
    p = min(max(float(p), 0.0), 1.0)
    return float(lambda_max) * (2.0 / (1.0 + math.exp(-float(gamma) * p)) - 1.0)


def annealed_lr(p: float, lr0: float, alpha: float = 10.0, beta: float = 0.75) -> float:
    """``lr0 / (1 + alpha p) ** beta``, with ``p`` clipped to [0, 1]."""
    p = min(max(float(p), 0.0), 1.0)
    return float(lr0) / (1.0 + float(alpha) * p) ** float(beta)


def _inner(optimizer):
    return getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer under mixed_float16


class LambdaScheduler(keras.callbacks.Callback):
    """Set every :class:`GradientReversal` lambda (and, with ``anneal_lr``, the learning rate) before each step.

    ``total_steps``: the number of optimizer steps of the whole run (default: ``epochs * steps`` from ``fit``).

    The annealed rate is ``base_lr * (1 + alpha p) ** -beta``. The base rate is ``base_lr`` (default: what the
    optimizer holds at the first step); when another callback sets a new rate at an epoch boundary (tltf's
    :class:`~tltf.staging.StagedFineTuning` entering a stage), that rate becomes the base, so stage plans keep their
    rates and annealing scales them. On a resumed run, a restored rate equal to ``base_lr``'s annealed value keeps
    ``base_lr``; any other rate is taken as a newly set base. Each epoch's logs get ``grl_lambda`` (and ``lr``).
    With ``align_max`` (``--adapt mmd|coral``) the same warm-up sets the model's ``align_weight`` (the weight of the
    feature discrepancy), logged as ``align_weight``.
    """

    def __init__(self, total_steps: int | None = None, gamma: float = 10.0, lambda_max: float = 1.0,
                 anneal_lr: bool = False, alpha: float = 10.0, beta: float = 0.75, base_lr: float | None = None,
                 align_max: float = 0.0, entropy_max: float = 0.0):
        super().__init__()
        self.align_max = float(align_max)
        self.align_weight = 0.0
        self.entropy_max = float(entropy_max)
        self.entropy_weight = 0.0
        self.total_steps = total_steps
        self.gamma = float(gamma)
        self.lambda_max = float(lambda_max)
        self.anneal_lr = bool(anneal_lr)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.base_lr = base_lr
        self._step: int | None = None
        self._last_lr: float | None = None
        self._check_base = True
        self._layers = []
        self.lambda_ = 0.0

    def on_train_begin(self, logs=None):
        self._layers = reversal_layers(self.model)
        if self.total_steps is None:
            epochs, steps = self.params.get("epochs"), self.params.get("steps")
            if not epochs or not steps:
                raise ValueError("LambdaScheduler: give total_steps (fit does not know the steps per epoch)")
            self.total_steps = int(epochs) * int(steps)
        self._step = None  # read lazily: BackupAndRestore restores the optimizer in its own on_train_begin
        self._last_lr = None
        self._check_base = True

    def progress(self) -> float:
        """Training progress ``p`` in [0, 1] of the next step."""
        return min(1.0, self._step / max(1, self.total_steps)) if self._step is not None else 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._check_base = True

    def on_train_batch_begin(self, batch, logs=None):
        optimizer = _inner(self.model.optimizer)
        if self._step is None:
            self._step = int(keras.ops.convert_to_numpy(optimizer.iterations))
        p = self.progress()
        self.lambda_ = dann_lambda(p, self.gamma, self.lambda_max)
        for layer in self._layers:
            layer.lambda_var.assign(self.lambda_)
        if self.align_max:
            self.align_weight = dann_lambda(p, self.gamma, self.align_max)
            self.model.align_weight.assign(self.align_weight)
        if self.entropy_max:
            self.entropy_weight = dann_lambda(p, self.gamma, self.entropy_max)
            self.model.entropy_weight.assign(self.entropy_weight)
        if self.anneal_lr:
            if self._check_base:
                self._update_base(float(keras.ops.convert_to_numpy(optimizer.learning_rate)), p)
                self._check_base = False
            optimizer.learning_rate.assign(self.base_lr * self._factor(p))
            self._last_lr = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
        self._step += 1

    def _update_base(self, current: float, p: float) -> None:
        def close(a, b):
            return abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1e-30)

        if self._last_lr is not None:  # mid-run: a rate other than ours was set by someone else
            if not close(current, self._last_lr):
                self.base_lr = current
        elif self.base_lr is None:
            self.base_lr = current
        elif not close(current, self.base_lr * self._factor(p)) and not (p == 0 and close(current, self.base_lr)):
            # first step of a (resumed) run: a restored annealed rate keeps base_lr; anything else is a new base
            prev = self._factor(max(0.0, p - 1.0 / max(1, self.total_steps)))
            if not close(current, self.base_lr * prev):
                self.base_lr = current

    def _factor(self, p: float) -> float:
        return annealed_lr(p, 1.0, self.alpha, self.beta)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["grl_lambda"] = self.lambda_
            if self.align_max:
                logs["align_weight"] = self.align_weight
            if self.entropy_max:
                logs["entropy_weight"] = self.entropy_weight
            if self.anneal_lr and self._last_lr is not None:
                logs["lr"] = self._last_lr
