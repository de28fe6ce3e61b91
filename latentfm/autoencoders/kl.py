"""A trainable KL autoencoder in the style of LDM: a convolutional encoder to a diagonal Gaussian posterior
over latents, and a mirrored decoder. ``len(channel_mult) - 1`` stride-2 stages set the downsampling factor.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from latentfm.checkpoint import load_weights, read_state, resolve_checkpoint
from latentfm.config import AutoencoderRunConfig, KLModelConfig, config_from_dict
from latentfm.errors import LatentFMError


class ResnetBlock(nn.Module):
    """Two GroupNorm-SiLU-conv3x3 layers with a residual (1x1 projection when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output."""
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2 followed by a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` at twice the resolution."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _head(channels: int, out_channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))


def encoder(image_channels: int, cfg: KLModelConfig) -> nn.Sequential:
    """Images to ``2 * latent_channels`` maps (posterior mean and log-variance)."""
    widths = [cfg.channels * m for m in cfg.channel_mult]
    layers: list[nn.Module] = [nn.Conv2d(image_channels, widths[0], 3, padding=1)]
    previous = widths[0]
    for level, width in enumerate(widths):
        for _ in range(cfg.num_res_blocks):
            layers.append(ResnetBlock(previous, width, cfg.groups))
            previous = width
        if level < len(widths) - 1:
            layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
    layers += [ResnetBlock(previous, previous, cfg.groups), _head(previous, 2 * cfg.latent_channels, cfg.groups)]
    return nn.Sequential(*layers)


def decoder(image_channels: int, cfg: KLModelConfig) -> nn.Sequential:
    """Latents to images (unbounded; the training target lies in [-1, 1])."""
    widths = [cfg.channels * m for m in cfg.channel_mult]
    previous = widths[-1]
    layers: list[nn.Module] = [nn.Conv2d(cfg.latent_channels, previous, 3, padding=1)]
    layers.append(ResnetBlock(previous, previous, cfg.groups))
    for level in reversed(range(len(widths))):
        for _ in range(cfg.num_res_blocks + 1):
            layers.append(ResnetBlock(previous, widths[level], cfg.groups))
            previous = widths[level]
        if level > 0:
            layers.append(Upsample(previous))
    layers.append(_head(previous, image_channels, cfg.groups))
    return nn.Sequential(*layers)


def _check_shape(cfg: KLModelConfig) -> None:
    widths = [cfg.channels * m for m in cfg.channel_mult]
    if not widths or min(widths) < 1:
        raise LatentFMError(f"model.channel_mult={cfg.channel_mult}: give one positive multiplier per resolution")
    if cfg.groups < 1 or any(w % cfg.groups for w in widths):
        raise LatentFMError(f"model.channels × channel_mult {widths} must all divide by model.groups={cfg.groups}")


class KLAutoencoder(nn.Module):
    """Encoder to a diagonal Gaussian posterior ``N(mean, exp(logvar))`` and a decoder back to images.

    ``encode`` returns the posterior mean (``posterior="sample"`` draws from it instead), so that a latent
    cache and a flow model see deterministic latents unless asked otherwise.
    """

    def __init__(self, image_channels: int, cfg: KLModelConfig, posterior: str = "mean"):
        super().__init__()
        _check_shape(cfg)
        self.image_channels, self.posterior = image_channels, posterior
        self.latent_channels = cfg.latent_channels
        self.downsample_factor = 2 ** (len(cfg.channel_mult) - 1)
        self.encoder = encoder(image_channels, cfg)
        self.decoder = decoder(image_channels, cfg)

    def posterior_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance (clamped to [-30, 20], as LDM) of the posterior for images in [-1, 1]."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents of images in [-1, 1]: the posterior mean, or a sample when ``posterior="sample"``."""
        mean, logvar = self.posterior_params(x)
        if self.posterior == "mean":
            return mean
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * noise

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] of latents."""
        return self.decoder(z).clamp(-1.0, 1.0)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1))."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).mean()


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: stride-2 convolutions with GroupNorm and LeakyReLU to one logit per patch."""

    def __init__(self, image_channels: int, channels: int = 64, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(image_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(1, layers):
            blocks += [
                nn.Conv2d(width, width * 2, 4, stride=2, padding=1),
                nn.GroupNorm(8, width * 2),
                nn.LeakyReLU(0.2),
            ]
            width *= 2
        blocks.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-patch real/fake logits."""
        return self.net(x)


def load_kl_autoencoder(
    checkpoint: str | Path, posterior: str = "mean", image_channels: int | None = None
) -> KLAutoencoder:
    """The EMA weights of a ``latentfm train-autoencoder`` run (or one of its checkpoint directories)."""
    directory = resolve_checkpoint(checkpoint)
    state = read_state(directory, "autoencoder")
    if posterior not in ("mean", "sample"):
        raise LatentFMError(f"autoencoder.posterior={posterior!r} is unknown; use 'mean' or 'sample'")
    trained_channels = state.data.image_shape[0]
    if image_channels is not None and image_channels != trained_channels:
        raise LatentFMError(
            f"{directory} was trained on {trained_channels}-channel images but the data has {image_channels}; "
            f"set data.channels={trained_channels}"
        )
    model_config = config_from_dict(state.config, cls=AutoencoderRunConfig).model
    model = KLAutoencoder(trained_channels, model_config, posterior)
    load_weights(model, directory, "ema")
    return model.eval().requires_grad_(False)
