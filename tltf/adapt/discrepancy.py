"""Distances between the source and target feature distributions, minimised by ``--adapt mmd`` and ``--adapt coral``.

- :func:`mmd`: the squared maximum mean discrepancy under a sum of Gaussian kernels (multi-kernel MMD, DAN: Long et
  al., arXiv 1502.02791). The bandwidths are ``base * 2**k`` for ``k`` in ``-2..2``, ``base`` the mean squared
  distance between the batch's features (not differentiated: the kernel follows the features' scale, as in DAN's
  and TLlib's implementations). The estimate is the biased V-statistic ``mean(Kss) + mean(Ktt) - 2 mean(Kst)``: it
  is exactly 0 for identical batches, never negative, and grows as the two distributions move apart.
- :func:`coral`: Deep CORAL's loss (Sun & Saenko, arXiv 1607.01719), ``||C_s - C_t||_F^2 / (4 d^2)``, with ``C`` the
  features' covariance (``n - 1`` normalisation) and ``d`` their dimension: second-order statistics aligned.

Both take 2-D float features ``(n, d)`` (4-D maps are average-pooled first) and return a float32 scalar; they run in
the training step (TensorFlow ops via ``keras.ops``).

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
>>> float(mmd(x, x)), round(float(coral(x, x)), 6)
(0.0, 0.0)
"""

from __future__ import annotations

from keras import ops

KERNEL_POWERS = (-2, -1, 0, 1, 2)


def _flat(features):
    x = ops.cast(features, "float32")
    if len(x.shape) == 4:
        x = ops.mean(x, axis=(1, 2))
    return x


def mmd(source, target, powers=KERNEL_POWERS):
    """Multi-kernel squared MMD between two feature batches (see the module docstring)."""
    xs, xt = _flat(source), _flat(target)
    ns = ops.shape(xs)[0]
    both = ops.concatenate([xs, xt], axis=0)
    sq = ops.sum(both * both, axis=1)
    dist = ops.maximum(ops.expand_dims(sq, 1) + ops.expand_dims(sq, 0) - 2.0 * ops.matmul(both, ops.transpose(both)),
                       0.0)
    base = ops.stop_gradient(ops.mean(dist)) + 1e-8
    kernel = sum(ops.exp(-dist / (base * (2.0 ** p))) for p in powers)
    kss = kernel[:ns, :ns]
    ktt = kernel[ns:, ns:]
    kst = kernel[:ns, ns:]
    return ops.maximum(ops.mean(kss) + ops.mean(ktt) - 2.0 * ops.mean(kst), 0.0)


def _covariance(x):
    n = ops.cast(ops.shape(x)[0], "float32")
    centred = x - ops.mean(x, axis=0, keepdims=True)
    return ops.matmul(ops.transpose(centred), centred) / ops.maximum(n - 1.0, 1.0)


def coral(source, target):
    """Deep CORAL's loss between two feature batches (see the module docstring)."""
    xs, xt = _flat(source), _flat(target)
    d = ops.cast(ops.shape(xs)[1], "float32")
    diff = _covariance(xs) - _covariance(xt)
    return ops.sum(diff * diff) / (4.0 * d * d)


#: ``--adapt NAME`` -> the discrepancy it minimises
DISCREPANCIES = {"mmd": mmd, "coral": coral}

__all__ = ["DISCREPANCIES", "coral", "mmd"]
