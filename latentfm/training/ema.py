"""Exponential moving average of a model's weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A float32 shadow copy of ``model`` updated as ``ema <- ema + (1 - decay) (param - ema)``.

    With ``warmup`` the decay at update ``n`` is ``min(decay, (1 + n) / (10 + n))`` so that the average
    is not dominated by the random initialisation early in training.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).float().eval().requires_grad_(False)

    def decay_at(self, updates: int) -> float:
        """The decay used for the update that follows ``updates`` earlier ones."""
        return min(self.decay, (1 + updates) / (10 + updates)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        """Move the average towards ``model``'s current parameters."""
        ema_params = list(self.model.parameters())
        params = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1.0 - self.decay_at(updates))
