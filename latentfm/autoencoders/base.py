"""The autoencoder protocol and the latent normalisation shared by every autoencoder."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import torch


class Autoencoder(Protocol):
    """Maps images in [-1, 1] (NCHW) to latents and back."""

    latent_channels: int
    downsample_factor: int

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents of images in [-1, 1]."""
        ...

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of latents."""
        ...


@dataclass
class LatentNorm:
    """``z_norm = (z - shift) * scale`` with per-channel ``shift`` and ``scale`` (lists of floats)."""

    shift: list[float]
    scale: list[float]

    def _view(self, values: list[float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents to the normalised latents the flow model sees."""
        return (z - self._view(self.shift, z)) * self._view(self.scale, z)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latents back to raw latents for decoding."""
        return z / self._view(self.scale, z) + self._view(self.shift, z)

    @classmethod
    def estimate(cls, latents: Iterable[torch.Tensor], mode: str = "channel") -> LatentNorm:
        """Mean and inverse standard deviation of a stream of latent batches ``[B, C, H, W]``.

        ``mode`` is ``"channel"`` (per channel), ``"global"`` (one value for all channels) or ``"none"``.
        Accumulates in float64.
        """
        total, total_sq, count = 0.0, 0.0, 0
        for z in latents:
            z = z.detach().double().transpose(0, 1).flatten(1)
            total, total_sq, count = total + z.sum(1), total_sq + (z**2).sum(1), count + z.shape[1]
        mean, var = total / count, total_sq / count - (total / count) ** 2
        channels = len(mean)
        if mode == "none":
            return cls([0.0] * channels, [1.0] * channels)
        if mode == "global":
            global_mean = float(mean.mean())
            global_var = float((var + mean**2).mean()) - global_mean**2
            return cls([global_mean] * channels, [global_var**-0.5] * channels)
        return cls(mean.tolist(), var.clamp_min(1e-12).rsqrt().tolist())
