"""How well generated images follow semantic maps: mean intersection over union of class-id maps."""

from __future__ import annotations

import torch


def mean_iou(predicted: torch.Tensor, target: torch.Tensor, classes: int) -> float:
    """Mean over classes of |predicted ∩ target| / |predicted ∪ target|, each class's counts summed over the
    whole set of maps first (the usual segmentation mIoU); classes absent from both are left out.

    Example:
        >>> mean_iou(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]), classes=2)  # (1/2 + 1/2) / 2
        0.5
    """
    predicted, target = predicted.flatten().long(), target.flatten().long()
    intersection = torch.bincount(target[predicted == target], minlength=classes).double()
    union = (
        torch.bincount(predicted, minlength=classes).double() + torch.bincount(target, minlength=classes) - intersection
    )
    present = union > 0
    return (intersection[present] / union[present]).mean().item()
