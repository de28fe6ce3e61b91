"""Improved precision and recall (Kynkäänniemi et al. 2019): each feature set's manifold is the union of
balls around its points, each ball reaching the point's k-th nearest neighbour in its own set. Precision is
the fraction of generated features inside the real manifold; recall, of real features inside the generated
one. Distances are computed block by block, so the sets need not fit in memory as a distance matrix."""

from __future__ import annotations

from typing import Any

import torch

from latentfm.errors import LatentFMError


def _tensor(features: Any, device: torch.device | str) -> torch.Tensor:
    return torch.as_tensor(features).to(device=device, dtype=torch.float32)


def knn_radii(features: torch.Tensor, k: int = 3, block: int = 4096) -> torch.Tensor:
    """Distance from every feature to its ``k``-th nearest other feature of the same set."""
    if len(features) <= k:
        raise LatentFMError(f"a k-NN manifold with k={k} needs more than {k} features, got {len(features)}")
    radii = [torch.cdist(part, features).kthvalue(k + 1, dim=1).values for part in features.split(block)]
    return torch.cat(radii)  # the (k+1)-th smallest distance: the smallest is the point itself


def manifold_coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor, block: int = 4096) -> float:
    """Fraction of ``queries`` that lie within ``radii[j]`` of some ``manifold[j]``."""
    inside = [(torch.cdist(part, manifold) <= radii).any(dim=1) for part in queries.split(block)]
    return torch.cat(inside).float().mean().item()


def precision_recall(
    real: Any, fake: Any, k: int = 3, device: torch.device | str = "cpu", block: int = 4096
) -> tuple[float, float]:
    """``(precision, recall)`` of generated features ``fake [M, D]`` against real features ``real [N, D]``."""
    real, fake = _tensor(real, device), _tensor(fake, device)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise LatentFMError(f"precision/recall needs two feature sets [N, D] of one D; got {real.shape}, {fake.shape}")
    precision = manifold_coverage(real, knn_radii(real, k, block), fake, block)
    recall = manifold_coverage(fake, knn_radii(fake, k, block), real, block)
    return precision, recall
