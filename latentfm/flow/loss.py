"""The flow-matching regression loss."""

from __future__ import annotations

import torch


def flow_matching_loss(
    predicted: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean squared error between predicted and target velocities.

    Args:
        predicted, target: ``[B, ...]`` velocities.
        weights: optional ``[B]`` per-sample weights; the result is their weighted mean.
        mask: optional tensor broadcastable to ``target``, 1 where the loss counts (e.g. the hole of an
            inpainting mask); each sample's error is averaged over its masked elements only.

    Returns:
        A scalar float32 loss.
    """
    squared = (predicted.float() - target.float()) ** 2
    dims = tuple(range(1, squared.dim()))
    if mask is None:
        per_sample = squared.mean(dim=dims)
    else:
        mask = mask.float().expand_as(squared)
        per_sample = (squared * mask).sum(dim=dims) / mask.sum(dim=dims).clamp_min(1.0)
    if weights is None:
        return per_sample.mean()
    weights = weights.float()
    return (per_sample * weights).sum() / weights.sum().clamp_min(1e-12)
