"""Reconstruction quality of an autoencoder: 8-bit PSNR, the figure autoencoder papers report."""

from __future__ import annotations

import torch

from latentfm.image_io import to_uint8


def psnr_8bit(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two batches in [-1, 1], both quantised to 8 bits first (peak 255)."""
    a, b = (torch.from_numpy(to_uint8(x)).double() for x in (original, reconstruction))
    mse = (a - b).square().flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


def ssim_8bit(
    original: torch.Tensor, reconstruction: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004) of two batches in [-1, 1] quantised to 8 bits: an 11×11 Gaussian window
    (sigma 1.5) over the valid region of each channel, C1 = (0.01·255)², C2 = (0.03·255)², the mean of the map.

    Example:
        >>> x = torch.rand(2, 1, 16, 16) * 2 - 1
        >>> ssim_8bit(x, x).tolist()
        [1.0, 1.0]
    """
    a, b = (torch.from_numpy(to_uint8(x)).double().reshape(x.shape) for x in (original, reconstruction))
    channels = a.shape[1]
    offsets = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-offsets.square() / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(channels, 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, kernel, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a.square(), blur(b * b) - mu_b.square()
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a.square() + mu_b.square() + c1) * (var_a + var_b + c2))
    return ssim.flatten(1).mean(1)
