"""Training a KL autoencoder: L1 (+ L2) reconstruction, KL, and an optional hinge patch-GAN term.

It shares the flow trainer's loop (``latentfm.training.loop``): stateless batches and posterior noise,
exact resume, DDP, EMA, bf16 autocast on GPU, progress, atomic checkpoints. The EMA weights are what
``build_autoencoder({"kind": "kl", "checkpoint": RUN})`` loads.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentfm.atomic import write_bytes_atomic
from latentfm.autoencoders import Autoencoder
from latentfm.autoencoders.kl import KLAutoencoder, PatchDiscriminator, kl_divergence, load_kl_autoencoder
from latentfm.checkpoint import DataShapes
from latentfm.config import AutoencoderRunConfig
from latentfm.data import BatchRequest, ImageDataset, load_data_config, read_batches
from latentfm.errors import LatentFMError
from latentfm.image_io import save_grid
from latentfm.metrics.reconstruction import psnr_8bit
from latentfm.progress import progress_bar
from latentfm.seeding import derive_seed, generator
from latentfm.training.ema import EMA
from latentfm.training.loop import INIT, MODEL, NOISE, TrainingLoop

PREVIEW_IMAGES = 8


class _Reconstruct(nn.Module):
    """``(reconstruction, mean, logvar)`` of a KL autoencoder as one forward, so DDP sees the whole step."""

    def __init__(self, autoencoder: KLAutoencoder):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.autoencoder.posterior_params(x)
        return self.autoencoder.decoder(mean + (0.5 * logvar).exp() * noise), mean, logvar


class AutoencoderTrainer(TrainingLoop):
    """Trains a KLAutoencoder from an AutoencoderRunConfig; ``run()`` resumes from the latest checkpoint."""

    def __init__(self, config: AutoencoderRunConfig, data: ImageDataset | None = None):
        super().__init__(config)
        self.data = data if data is not None else self.load_images()
        channels, height, width = self.data.image_shape
        factor = 2 ** (len(config.model.channel_mult) - 1)
        if height % factor or width % factor:
            raise LatentFMError(
                f"images of {height}x{width} do not divide by the downsampling factor {factor} "
                "(model.channel_mult); set data.image_size to a multiple of it"
            )
        if len(self.data) < config.train.batch_size:
            raise LatentFMError(f"train.batch_size={config.train.batch_size} exceeds the {len(self.data)} images")
        torch.manual_seed(derive_seed(config.train.seed, INIT))
        self.model = KLAutoencoder(channels, config.model).to(self.device)
        self.ema = EMA(self.model, config.train.ema_decay, config.train.ema_warmup)
        self.optimizer = self.adamw(self.model.parameters())
        self.disc = None
        if config.loss.gan_weight > 0:
            if config.loss.disc_channels < 4 or config.loss.disc_channels % 4:
                raise LatentFMError(f"loss.disc_channels={config.loss.disc_channels} must be a positive multiple of 4")
            self.disc = PatchDiscriminator(channels, config.loss.disc_channels).to(self.device)
            self.disc_optimizer = self.adamw(self.disc.parameters())
        resumed = self.run_dir.resume_point(config)
        if resumed:
            self.load(resumed)
        self.train_model = self.wrap(_Reconstruct(self.model))
        self.train_disc = self.wrap(self.disc) if self.disc is not None else None
        self.latent_shape = (config.model.latent_channels, height // factor, width // factor)

    # -- checkpoints ---------------------------------------------------------------------------------

    def checkpoint_modules(self) -> dict[str, nn.Module]:
        """The autoencoder, its EMA and, with the GAN term, the discriminator."""
        modules = {"model": self.model, "ema": self.ema.model}
        return modules if self.disc is None else {**modules, "disc": self.disc}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The autoencoder's optimizer and, with the GAN term, the discriminator's."""
        optimizers = {"optimizer": self.optimizer}
        return optimizers if self.disc is None else {**optimizers, "disc_optimizer": self.disc_optimizer}

    def checkpoint_state(self) -> dict[str, Any]:
        """What ``load_kl_autoencoder`` checks: the checkpoint kind and the image and latent shapes."""
        return {
            "kind": "autoencoder",
            "data": DataShapes(image_shape=list(self.data.image_shape), latent_shape=list(self.latent_shape)),
        }

    def evaluate_reconstruction(self, checkpoint: Path, split: str) -> dict[str, Any]:
        """8-bit PSNR of the EMA autoencoder of ``checkpoint`` on ``split``, written to ``RUN/eval.json``."""
        data = load_data_config(self.config.data, split)
        autoencoder = load_kl_autoencoder(checkpoint).to(self.device)
        psnr = reconstruction_psnr(
            autoencoder, data, device=self.device, progress=True, workers=self.config.data.workers
        )
        report = {"checkpoint": str(checkpoint), "split": split, "images": len(data), "psnr_db": psnr}
        write_bytes_atomic(self.run_dir.path / "eval.json", json.dumps(report, indent=1).encode())
        return report

    # -- one step ------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, torch.Tensor]:
        """One step of the autoencoder (and of the discriminator once the GAN term is on)."""
        loss_cfg, seed = self.config.loss, self.config.train.seed
        x = self.step_images(self.data, self.step).floats()
        noise_shape = (self.config.train.batch_size, *self.latent_shape)
        noise = torch.randn(noise_shape, generator=generator(self.device, seed, NOISE, self.step), device=self.device)
        torch.manual_seed(derive_seed(seed, MODEL, self.step, self.dist.rank))
        with self.autocast():
            reconstruction, mean, logvar = self.train_model(x, noise[self.rank_slice()])
        reconstruction = reconstruction.float()
        error = reconstruction - x
        losses = {"l1": error.abs().mean(), "kl": kl_divergence(mean.float(), logvar.float())}
        total = loss_cfg.l1_weight * losses["l1"] + loss_cfg.kl_weight * losses["kl"]
        if loss_cfg.l2_weight:
            losses["l2"] = error.square().mean()
            total = total + loss_cfg.l2_weight * losses["l2"]
        gan_on = self.disc is not None and self.step >= loss_cfg.gan_start
        if gan_on:
            losses["generator"] = self._generator_loss(reconstruction)
            total = total + loss_cfg.gan_weight * losses["generator"]
        updated = self.optimise(total, self.model, self.optimizer)
        if gan_on:
            losses["discriminator"] = self._discriminator_step(x, reconstruction.detach())
        if updated:
            self.ema.update(self.model, self.step)
        self.step += 1
        return {"loss": total.detach(), **{name: value.detach() for name, value in losses.items()}}

    def _generator_loss(self, reconstruction: torch.Tensor) -> torch.Tensor:
        # The unwrapped discriminator with frozen weights: gradients reach the autoencoder only.
        self.disc.requires_grad_(False)
        with self.autocast():
            loss = -self.disc(reconstruction).float().mean()
        self.disc.requires_grad_(True)
        return loss

    def _discriminator_step(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            logits_real, logits_fake = self.train_disc(real).float(), self.train_disc(fake).float()
        loss = torch.relu(1.0 - logits_real).mean() + torch.relu(1.0 + logits_fake).mean()
        self.optimise(loss, self.disc, self.disc_optimizer)
        return loss.detach()

    # -- pictures ------------------------------------------------------------------------------------

    @torch.no_grad()
    def save_samples(self) -> Path:
        """Originals (top row) and EMA reconstructions (bottom row) to ``RUN/samples/step_XXXXXXXX.png``."""
        images, _ = self.data.batch(torch.arange(PREVIEW_IMAGES), device=self.device)
        reconstructions = self.ema.model.decode(self.ema.model.encode(images))
        path = self.run_dir.samples_file(self.step)
        save_grid(torch.cat([images, reconstructions]).cpu(), path, columns=PREVIEW_IMAGES)
        return path


@torch.no_grad()
def reconstruction_psnr(
    autoencoder: Autoencoder,
    data: ImageDataset,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    limit: int | None = None,
    progress: bool = False,
    workers: int | None = None,
) -> float:
    """Mean 8-bit PSNR of ``decode(encode(x))`` over the first ``limit`` images of ``data`` (all by default), read
    by ``workers`` processes (``latentfm.data.loader.read_batches``)."""
    total = min(len(data), limit or len(data))
    requests = [BatchRequest(rows) for rows in torch.arange(total).split(batch_size)]
    values, batches = [], read_batches(data, requests, workers, device)
    with progress_bar(total=len(requests), desc="reconstructing", show=progress) as bar, contextlib.closing(batches):
        for batch in batches:
            images = batch.floats()
            values.append(psnr_8bit(images.cpu(), autoencoder.decode(autoencoder.encode(images)).float().cpu()))
            bar.update(1)
    return float(torch.cat(values).mean())
