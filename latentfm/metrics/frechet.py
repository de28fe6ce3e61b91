"""The Fréchet distance between Gaussians fitted to features, and streaming feature moments.

Example:
    >>> import numpy as np
    >>> stats = FeatureStats()
    >>> for batch in np.array_split(np.random.default_rng(0).normal(size=(1000, 8)), 7):
    ...     _ = stats.update(batch)
    >>> round(frechet_distance(stats.mean, stats.cov, stats.mean + 1.0, stats.cov), 6)  # |Δμ|² = 8
    8.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from latentfm.errors import LatentFMError


def _float64(array: Any) -> np.ndarray:
    """A numpy float64 copy of a numpy array, tensor (any device) or nested list."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().double().numpy()
    return np.array(array, dtype=np.float64)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ vectors.T


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """``|mu1 - mu2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½)`` in float64 (numpy arrays or tensors).

    ``tr (Σ1 Σ2)^½`` is computed as the sum of square roots of the eigenvalues of the symmetric positive
    semi-definite ``Σ1^½ Σ2 Σ1^½`` (same spectrum as ``Σ1 Σ2``): unlike a general matrix square root of the
    non-symmetric product, this never yields complex parts, and singular covariances (fewer samples than
    dimensions) need no diagonal offset.
    """
    mu1, mu2, sigma1, sigma2 = (_float64(a) for a in (mu1, mu2, sigma1, sigma2))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise LatentFMError(
            f"Fréchet distance needs means of shape [D] and covariances [D, D] of one D; got {mu1.shape}, "
            f"{sigma1.shape}, {mu2.shape}, {sigma2.shape}"
        )
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


class FeatureStats:
    """Mean and covariance of features seen batch by batch, in float64 (Chan et al.'s pairwise update, so
    large means do not cancel the covariance). ``cov`` is the unbiased estimate, as ``numpy.cov``."""

    def __init__(self, dim: int | None = None):
        self.n = 0
        self._mean = None if dim is None else np.zeros(dim)
        self._m2 = None if dim is None else np.zeros((dim, dim))

    def update(self, features: Any) -> FeatureStats:
        """Add a batch ``[B, D]`` (numpy or tensor); returns ``self``."""
        batch = _float64(features)
        if batch.ndim != 2 or (self._mean is not None and batch.shape[1] != self._mean.shape[0]):
            expected = "[B, D]" if self._mean is None else f"[B, {self._mean.shape[0]}]"
            raise LatentFMError(f"feature batch of shape {batch.shape} does not match {expected}")
        if len(batch):
            centred = batch - batch.mean(0)
            self._merge(len(batch), batch.mean(0), centred.T @ centred)
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add the features another ``FeatureStats`` has seen (e.g. another rank's); returns ``self``."""
        if other.n:
            self._merge(other.n, other._mean, other._m2)
        return self

    def _merge(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        if self._mean is None or self.n == 0:
            self.n, self._mean, self._m2 = n, mean.copy(), m2.copy()
            return
        total = self.n + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + np.outer(delta, delta) * (self.n * n / total)
        self.n = total

    @property
    def mean(self) -> np.ndarray:
        """The mean feature ``[D]``."""
        if not self.n:
            raise LatentFMError("no features seen yet")
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """The unbiased covariance ``[D, D]`` (needs at least two features)."""
        if self.n < 2:
            raise LatentFMError(f"a covariance needs at least 2 features, got {self.n}")
        return self._m2 / (self.n - 1)
