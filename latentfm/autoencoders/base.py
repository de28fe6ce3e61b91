"""The autoencoder protocol and the latent normalisation shared by every autoencoder."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import torch

from latentfm.checkpoint import weights_sha256
from latentfm.errors import LatentFMError


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

    @staticmethod
    def moments(latents: Iterable[torch.Tensor]) -> tuple[list[float], list[float]]:
        """Per-channel mean and variance of a stream of latent batches ``[B, C, H, W]``, in float64."""
        total, total_sq, count = 0.0, 0.0, 0
        for z in latents:
            z = z.detach().double().transpose(0, 1).flatten(1)
            total, total_sq, count = total + z.sum(1), total_sq + (z**2).sum(1), count + z.shape[1]
        if count == 0:
            raise LatentFMError("no latents to estimate the normalisation from; set autoencoder.norm_batches >= 1")
        mean = total / count
        return mean.tolist(), (total_sq / count - mean**2).tolist()

    @classmethod
    def from_moments(cls, mean: list[float], var: list[float], mode: str = "channel") -> LatentNorm:
        """The normalisation that gives unit variance and zero mean per channel (``"channel"``), over all
        channels (``"global"``), or the identity (``"none"``)."""
        channels = len(mean)
        if mode == "none":
            return cls([0.0] * channels, [1.0] * channels)
        if mode == "global":
            global_mean = sum(mean) / channels
            global_var = sum(v + m**2 for v, m in zip(var, mean)) / channels - global_mean**2
            return cls([global_mean] * channels, [global_var**-0.5] * channels)
        if mode == "channel":
            return cls(list(mean), [max(v, 1e-12) ** -0.5 for v in var])
        raise LatentFMError(f"autoencoder.normalize={mode!r} is unknown; use channel, global, none or pretrained")

    @classmethod
    def estimate(cls, latents: Iterable[torch.Tensor], mode: str = "channel") -> LatentNorm:
        """The normalisation of ``mode`` estimated from a stream of latent batches (see ``from_moments``)."""
        return cls.from_moments(*cls.moments(latents), mode)


def check_image_size(image_shape: tuple[int, ...], autoencoder: Autoencoder) -> None:
    """Refuse images whose height or width the autoencoder's downsampling factor does not divide."""
    height, width, factor = image_shape[-2], image_shape[-1], autoencoder.downsample_factor
    if height % factor or width % factor:
        raise LatentFMError(
            f"images of {height}x{width} do not divide by the autoencoder's downsampling factor {factor}; "
            f"set data.image_size to a multiple of {factor}"
        )


def autoencoder_identity(autoencoder: Autoencoder, kind: str) -> dict[str, object]:
    """What makes two autoencoders give the same latents: kind, weights hash, shapes and posterior rule."""
    return {
        "kind": kind,
        "weights_sha256": weights_sha256(autoencoder),
        "latent_channels": autoencoder.latent_channels,
        "downsample_factor": autoencoder.downsample_factor,
        "posterior": getattr(autoencoder, "posterior", "deterministic"),
    }


def latent_norm_for(autoencoder: Autoencoder, mode: str, moments: Callable[[], tuple[list, list]]) -> LatentNorm:
    """The normalisation ``autoencoder.normalize`` asks for: the autoencoder's published one
    (``"pretrained"``) or one estimated from ``moments()`` (called only when needed)."""
    if mode != "pretrained":
        return LatentNorm.from_moments(*moments(), mode)
    if not hasattr(autoencoder, "pretrained_norm"):
        raise LatentFMError(
            "autoencoder.normalize=pretrained: this autoencoder publishes no normalisation; use normalize=channel"
        )
    return autoencoder.pretrained_norm()
