"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² with the cubic polynomial kernel
``k(x, y) = (x·y / D + 1)³``, averaged over random subsets of equal size (as torch-fidelity and ADM do)."""

from __future__ import annotations

from typing import Any

import numpy as np

from latentfm.errors import LatentFMError
from latentfm.metrics.frechet import _float64


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD² estimate of two equal-size feature sets under the cubic polynomial kernel."""
    m, dim = x.shape
    k_xx = (x @ x.T / dim + 1) ** 3
    k_yy = (y @ y.T / dim + 1) ** 3
    k_xy = (x @ y.T / dim + 1) ** 3
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.mean())


def kernel_distance(
    real: Any, fake: Any, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID of feature sets ``[N, D]`` and ``[M, D]``: mean and standard deviation over ``subsets`` random
    subsets of ``min(subset_size, N, M)`` features each (drawn without replacement, seeded), in float64."""
    real, fake = _float64(real), _float64(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise LatentFMError(f"KID needs two feature sets [N, D] of one D; got {real.shape} and {fake.shape}")
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise LatentFMError(f"KID needs at least 2 features per set; got {len(real)} and {len(fake)}")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        real_subset = real[rng.choice(len(real), size, replace=False)]
        values.append(_unbiased_mmd2(real_subset, fake[rng.choice(len(fake), size, replace=False)]))
    return float(np.mean(values)), float(np.std(values))
