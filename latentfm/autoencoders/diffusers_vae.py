"""A diffusers ``AutoencoderKL`` (SD-VAE, SDXL-VAE, FLUX.1-VAE, ...) behind the autoencoder protocol.

Optional: needs ``pip install 'latentfm[diffusers]'``. Latents are raw (not multiplied by ``scaling_factor``);
:meth:`DiffusersAutoencoder.pretrained_norm` gives the published normalisation as a :class:`LatentNorm`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from latentfm.autoencoders.base import LatentNorm
from latentfm.errors import LatentFMError

POSTERIORS = ("mean", "sample")


class DiffusersAutoencoder(nn.Module):
    """Wraps an ``AutoencoderKL``: ``encode(images in [-1, 1]) -> raw latents``, ``decode(z) -> images in [-1, 1]``.

    ``posterior="mean"`` encodes to the posterior mean (deterministic), ``"sample"`` to a posterior sample.
    With ``image_channels=1`` and an RGB VAE, grey images are repeated to RGB and decoded images averaged back.
    """

    def __init__(self, vae: nn.Module, posterior: str = "mean", image_channels: int = 3):
        super().__init__()
        if posterior not in POSTERIORS:
            raise LatentFMError(f"autoencoder posterior={posterior!r} is unknown; use 'mean' or 'sample'")
        config = vae.config
        if image_channels != config.in_channels and not (image_channels == 1 and config.in_channels == 3):
            raise LatentFMError(
                f"the diffusers autoencoder takes {config.in_channels}-channel images, not {image_channels}"
            )
        self.vae = vae
        self.posterior = posterior
        self.image_channels = image_channels
        self.latent_channels = int(config.latent_channels)
        self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Float32 latents of images ``[B, image_channels, H, W]`` in [-1, 1]; ``generator`` seeds sampling."""
        if x.shape[1] != self.image_channels:
            raise LatentFMError(f"images have {x.shape[1]} channels but the autoencoder expects {self.image_channels}")
        x = x.expand(-1, self.vae.config.in_channels, -1, -1).to(self.vae.dtype)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean if self.posterior == "mean" else posterior.sample(generator=generator)
        return z.float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Float32 images ``[B, image_channels, H, W]`` in [-1, 1] of raw latents."""
        x = self.vae.decode(z.to(self.vae.dtype)).sample.float()
        if x.shape[1] != self.image_channels:
            x = x.mean(1, keepdim=True)
        return x.clamp(-1.0, 1.0)

    def pretrained_norm(self) -> LatentNorm:
        """The autoencoder's published normalisation: ``(z - shift_factor) * scaling_factor`` per channel.

        Configs with ``latents_mean`` and ``latents_std`` (SDXL style) give
        ``(z - latents_mean) * scaling_factor / latents_std`` instead, as diffusers' pipelines do.
        """
        config, channels = self.vae.config, self.latent_channels
        mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
        if mean is not None and std is not None:
            return LatentNorm([float(m) for m in mean], [config.scaling_factor / float(s) for s in std])
        shift = float(config.shift_factor or 0.0)
        return LatentNorm([shift] * channels, [float(config.scaling_factor)] * channels)


def load_diffusers_autoencoder(
    path: str | Path,
    subfolder: str | None = None,
    posterior: str = "mean",
    image_channels: int = 3,
    dtype: torch.dtype = torch.float32,
) -> DiffusersAutoencoder:
    """A frozen :class:`DiffusersAutoencoder` (eval mode) from a local directory or the Hugging Face cache.

    ``path`` is a directory saved with ``save_pretrained`` (or a model id already in the local cache);
    ``subfolder`` is e.g. ``"vae"`` for a full pipeline directory. Nothing is ever downloaded.
    """
    if posterior not in POSTERIORS:
        raise LatentFMError(f"autoencoder posterior={posterior!r} is unknown; use 'mean' or 'sample'")
    try:
        from diffusers import AutoencoderKL
    except ImportError as exc:
        raise LatentFMError(
            "autoencoder.kind=diffusers needs the diffusers package: pip install 'latentfm[diffusers]'"
        ) from exc
    accelerate = importlib.util.find_spec("accelerate") is not None  # without it diffusers warns unless told
    try:
        vae = AutoencoderKL.from_pretrained(
            str(path), subfolder=subfolder, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=accelerate
        )
    except (OSError, ValueError) as exc:  # diffusers and huggingface_hub raise these for a missing or bad model
        raise LatentFMError(_load_failure(path, subfolder, exc)) from exc
    return DiffusersAutoencoder(vae, posterior, image_channels).eval().requires_grad_(False)


def _load_failure(path: str | Path, subfolder: str | None, exc: Exception) -> str:
    """One line saying why ``from_pretrained`` failed and what to set instead."""
    where = f"{path}" + (f" (subfolder {subfolder!r})" if subfolder else "")
    fix = "set autoencoder.path to a directory saved by AutoencoderKL.save_pretrained (nothing is downloaded)"
    if not Path(path).exists():
        return f"diffusers autoencoder {where} not found locally nor in the Hugging Face cache; {fix}"
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"cannot load a diffusers AutoencoderKL from {where}: {reason}; {fix}"
