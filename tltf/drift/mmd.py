"""The kernel two-sample test: maximum mean discrepancy (MMD) with a Gaussian kernel and a permutation p-value.

Gretton, Borgwardt, Rasch, Schölkopf and Smola, "A Kernel Two-Sample Test" (JMLR 2012). The statistic is the
unbiased estimate of MMD² between the two samples (eq. 3 of the paper); the kernel is
``k(a, b) = exp(-||a - b||² / (2 σ²))`` with the bandwidth ``σ`` set by the median heuristic: the median distance
between distinct points of the *pooled* sample. Because the pooled sample does not change when its points are
relabelled, the bandwidth is the same for every permutation and the permutation test stays exact: under the null
hypothesis (both samples from one distribution) ``P(p <= alpha) <= alpha`` for every ``alpha``.

The kernel matrix of the pooled sample is computed once; each permutation only relabels its rows and columns, so
``B`` permutations cost ``B`` matrix-vector products, done in chunks as matrix-matrix products.

>>> rng = np.random.default_rng(0)
>>> same = mmd_test(rng.normal(size=(100, 5)), rng.normal(size=(100, 5)), permutations=200)
>>> moved = mmd_test(rng.normal(size=(100, 5)), rng.normal(0.5, 1, size=(100, 5)), permutations=200)
>>> bool(same.p_value > 0.05), bool(moved.p_value < 0.01)
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tltf.errors import TltfError

_CHUNK_ELEMENTS = 4_000_000  # permutations x pooled points per matrix product: ~32 MB of float64 at a time


@dataclass(frozen=True)
class MMDResult:
    """The outcome of :func:`mmd_test`: ``statistic`` (unbiased MMD²), its permutation ``p_value``, the kernel
    ``bandwidth`` (σ), the number of ``permutations`` and the sample sizes."""

    statistic: float
    p_value: float
    bandwidth: float
    permutations: int
    n_x: int
    n_y: int

    def as_dict(self) -> dict:
        return {"statistic": self.statistic, "p_value": self.p_value, "bandwidth": self.bandwidth,
                "permutations": self.permutations}


def squared_distances(z: np.ndarray) -> np.ndarray:
    """``(N, N)`` squared Euclidean distances between the rows of ``z`` (float64, clipped at 0, zero diagonal)."""
    z = np.asarray(z, np.float64)
    norms = np.einsum("ij,ij->i", z, z)
    d2 = norms[:, None] + norms[None, :] - 2.0 * (z @ z.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return d2


def median_bandwidth(d2: np.ndarray) -> float:
    """The median heuristic: the median distance between distinct points (from squared distances ``d2``).

    Falls back to 1 when more than half the pairs coincide (a degenerate sample: the kernel would be 0/0)."""
    upper = d2[np.triu_indices_from(d2, k=1)]
    sigma = float(np.sqrt(np.median(upper))) if upper.size else 0.0
    return sigma if sigma > 0 else 1.0


def gaussian_kernel(d2: np.ndarray, bandwidth: float) -> np.ndarray:
    """``exp(-d² / (2 σ²))`` of squared distances ``d2``."""
    return np.exp(-d2 / (2.0 * bandwidth ** 2))


def _unbiased_mmd2(kernel: np.ndarray, in_x: np.ndarray, n_x: int, n_y: int) -> np.ndarray:
    """Unbiased MMD² for each row of ``in_x`` (``(B, N)`` 0/1: which pooled points form the first sample).

    With ``a`` the 0/1 indicator of the first sample, ``r = K 1`` and ``t = 1ᵀ K 1``: ``Σ_{X×X} k = aᵀKa``,
    ``Σ_{X×Y} k = aᵀr - aᵀKa`` and ``Σ_{Y×Y} k = t - 2 Σ_{X×Y} k - Σ_{X×X} k``; the diagonal terms (``k(z, z)``,
    1 for a Gaussian kernel) are taken out of the within-sample sums, as the unbiased estimator requires."""
    diag = np.diag(kernel)
    rowsum = kernel.sum(axis=1)
    total = rowsum.sum()
    ka = in_x @ kernel
    xx = np.einsum("bn,bn->b", ka, in_x)
    xy = in_x @ rowsum - xx
    yy = total - 2.0 * xy - xx
    diag_x = in_x @ diag
    diag_y = diag.sum() - diag_x
    within = (xx - diag_x) / (n_x * (n_x - 1)) + (yy - diag_y) / (n_y * (n_y - 1))
    return within - 2.0 * xy / (n_x * n_y)


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 1000, seed: int = 0,
             bandwidth: float | None = None) -> MMDResult:
    """Kernel two-sample test of ``x`` ``(n, d)`` against ``y`` ``(m, d)``: are they drawn from one distribution?

    ``p_value`` is ``(1 + #{permuted statistics >= observed}) / (1 + permutations)``, so it is never 0 and the test
    at level ``alpha`` rejects at most an ``alpha`` fraction of the time when the samples are exchangeable.
    ``bandwidth`` (σ) defaults to the median heuristic on the pooled sample.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise TltfError(f"MMD test: two (N, D) feature arrays of the same width needed, got {x.shape} and {y.shape}")
    n_x, n_y = len(x), len(y)
    if n_x < 2 or n_y < 2:
        raise TltfError(f"MMD test: needs at least 2 samples on each side (got {n_x} and {n_y})")
    if permutations < 1:
        raise TltfError(f"MMD test: permutations must be >= 1 (got {permutations})")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise TltfError("MMD test: the features hold NaN or infinite values")
    d2 = squared_distances(np.concatenate([x, y]))
    sigma = float(bandwidth) if bandwidth else median_bandwidth(d2)
    kernel = gaussian_kernel(d2, sigma)
    del d2
    n = n_x + n_y
    observed = np.zeros((1, n))
    observed[0, :n_x] = 1.0
    statistic = float(_unbiased_mmd2(kernel, observed, n_x, n_y)[0])

    rng = np.random.default_rng(seed)
    exceed, done = 0, 0
    chunk = max(1, _CHUNK_ELEMENTS // n)
    while done < permutations:
        b = min(chunk, permutations - done)
        first = np.argsort(rng.random((b, n)), axis=1)[:, :n_x]  # b independent uniform random relabellings
        in_x = np.zeros((b, n))
        np.put_along_axis(in_x, first, 1.0, axis=1)
        # a tolerance so that permutations tied with the observed labelling (up to rounding) count as tied
        exceed += int((_unbiased_mmd2(kernel, in_x, n_x, n_y) >= statistic - 1e-12).sum())
        done += b
    return MMDResult(statistic, (1 + exceed) / (1 + permutations), sigma, permutations, n_x, n_y)
