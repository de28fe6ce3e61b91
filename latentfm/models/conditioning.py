"""Input checks and condition plumbing shared by the backbones (the ``Condition`` type is ground floor)."""

from __future__ import annotations

import torch
from torch import nn

from latentfm.condition import Condition
from latentfm.errors import LatentFMError


def check_velocity_inputs(model: str, x: torch.Tensor, t: torch.Tensor, shape: tuple[int, int, int]) -> None:
    """Raise LatentFMError unless ``x`` is ``[B, *shape]`` and ``t`` is ``[B]``; ``model`` names the backbone."""
    if x.ndim != 4 or tuple(x.shape[1:]) != shape:
        raise LatentFMError(f"{model}: x has shape {tuple(x.shape)}, expected [B, {', '.join(map(str, shape))}]")
    if tuple(t.shape) != (x.shape[0],):
        raise LatentFMError(f"{model}: t has shape {tuple(t.shape)}, expected [{x.shape[0]}] (one time per sample)")


def concat_input(
    model: str, cond: Condition, channels: int, x: torch.Tensor, encoder: nn.Module | None = None
) -> torch.Tensor | None:
    """The validated ``cond.concat`` for input ``x`` of a backbone with ``channels`` concat channels, passed
    through the backbone's condition ``encoder`` first when it has one."""
    if not channels:
        if cond.concat is not None:
            raise LatentFMError(f"{model}: cond.concat was given but the model has concat_channels=0")
        return None
    if cond.concat is None:
        raise LatentFMError(f"{model}: the model has concat_channels={channels} but cond.concat is missing")
    concat = cond.concat if encoder is None else encoder(cond.concat.to(x.dtype))
    expected = (x.shape[0], channels, *x.shape[2:])
    if tuple(concat.shape) != expected:
        encoded = "" if encoder is None else " after the condition encoder"
        raise LatentFMError(f"{model}: cond.concat{encoded} has shape {tuple(concat.shape)}, expected {expected}")
    return concat


def label_embedding(model: str, embedder: nn.Module | None, labels: torch.Tensor | None, x: torch.Tensor):
    """``embedder(labels)`` (the null label when ``labels`` is None), or 0 for a class-free backbone."""
    if embedder is None:
        if labels is not None:
            raise LatentFMError(f"{model}: cond.labels was given but the model has num_classes=0")
        return 0.0
    if labels is None:
        labels = torch.full((x.shape[0],), embedder.num_classes, dtype=torch.long, device=x.device)
    elif tuple(labels.shape) != (x.shape[0],):
        raise LatentFMError(f"{model}: cond.labels has shape {tuple(labels.shape)}, expected [{x.shape[0]}]")
    return embedder(labels)
