"""The learned condition encoder of semantic maps: one-hot maps at image resolution to features at latent
resolution (LFM's "spatial rescaler"), part of the model so that it is trained, EMA'd and checkpointed with it."""

from __future__ import annotations

import math

import torch
from torch import nn

from latentfm.errors import LatentFMError


class MapRescaler(nn.Module):
    """One-hot maps ``[B, classes, H, W]`` to ``[B, out_channels, H / factor, W / factor]``.

    A 3×3 convolution, one stride-2 convolution per halving, then a 1×1 projection. In training mode each map is
    replaced by the empty map (all zeros, also what sampling without a map uses) with probability ``dropout``,
    drawn from the global RNG like label dropout.

    Example:
        >>> rescaler = MapRescaler(classes=3, out_channels=8, factor=4)
        >>> rescaler(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(self, classes: int, out_channels: int, factor: int, dropout: float = 0.0, width: int = 64):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise LatentFMError(f"the map rescaler needs a power-of-two image/latent size ratio, got {factor}")
        self.classes, self.dropout = classes, dropout
        layers: list[nn.Module] = [nn.Conv2d(classes, width, 3, padding=1), nn.SiLU()]
        for _ in range(int(math.log2(factor))):
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(width, out_channels, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Features of the one-hot ``maps`` (empty maps with probability ``dropout`` in training mode)."""
        if maps.shape[1] != self.classes:
            raise LatentFMError(f"the map rescaler expects {self.classes} one-hot channels, got {maps.shape[1]}")
        if self.training and self.dropout > 0:
            keep = torch.rand(maps.shape[0], device=maps.device) >= self.dropout
            maps = maps * keep.view(-1, 1, 1, 1).to(maps.dtype)
        return self.net(maps)
