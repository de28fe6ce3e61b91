"""The identity autoencoder: pixel-space training through the same code path as latents."""

from __future__ import annotations

import torch
from torch import nn


class IdentityAutoencoder(nn.Module):
    """``encode`` and ``decode`` return their input; ``decode`` clamps to the image range [-1, 1]."""

    downsample_factor = 1

    def __init__(self, channels: int):
        super().__init__()
        self.latent_channels = channels

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The images themselves."""
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The latents clamped to [-1, 1]."""
        return z.clamp(-1.0, 1.0)
