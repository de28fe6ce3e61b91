"""Reconstruction quality of an autoencoder: 8-bit PSNR, the figure autoencoder papers report."""

from __future__ import annotations

import torch

from latentfm.image_io import to_uint8


def psnr_8bit(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two batches in [-1, 1], both quantised to 8 bits first (peak 255)."""
    a, b = (torch.from_numpy(to_uint8(x)).double() for x in (original, reconstruction))
    mse = (a - b).square().flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-10))
