"""Reconstruction quality of an autoencoder: 8-bit PSNR, the figure autoencoder papers report."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from latentfm.autoencoders import Autoencoder
from latentfm.data import ImageData
from latentfm.image_io import to_uint8


def psnr_8bit(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of two batches in [-1, 1], both quantised to 8 bits first (peak 255)."""
    a, b = (torch.from_numpy(to_uint8(x)).double() for x in (original, reconstruction))
    mse = (a - b).square().flatten(1).mean(1)
    return 10.0 * torch.log10(255.0**2 / mse.clamp_min(1e-10))


@torch.no_grad()
def reconstruction_psnr(
    autoencoder: Autoencoder,
    data: ImageData,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    progress: bool = False,
) -> float:
    """Mean 8-bit PSNR of ``decode(encode(x))`` over the first ``limit`` images of ``data`` (all by default)."""
    total = min(len(data), limit or len(data))
    values = []
    for start in tqdm(range(0, total, batch_size), desc="reconstructing", disable=not progress):
        images, _ = data.batch(torch.arange(start, min(start + batch_size, total)), device=device)
        values.append(psnr_8bit(images.cpu(), autoencoder.decode(autoencoder.encode(images)).float().cpu()))
    return float(torch.cat(values).mean())
