"""Training a KL autoencoder: L1 (+ L2) reconstruction, KL, and an optional hinge patch-GAN term.

It shares the flow trainer's loop (``latentfm.training.loop``): stateless batches and posterior noise,
exact resume, DDP, EMA, bf16 autocast on GPU, progress, atomic checkpoints. The EMA weights are what
``build_autoencoder({"kind": "kl", "checkpoint": RUN})`` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from latentfm import __version__
from latentfm.autoencoders.kl import KLAutoencoder, PatchDiscriminator, kl_divergence
from latentfm.config import AutoencoderRunConfig, config_to_dict
from latentfm.data import ImageData, load_dataset
from latentfm.errors import LatentFMError
from latentfm.image_io import save_grid
from latentfm.seeding import derive_seed, generator
from latentfm.training import checkpoint as ckpt
from latentfm.training.distributed import barrier
from latentfm.training.ema import EMA
from latentfm.training.loop import INIT, MODEL, NOISE, TrainingLoop

CHECKPOINT_KIND = "kl_autoencoder"
PREVIEW_IMAGES = 8


class _Reconstruct(nn.Module):
    """``(reconstruction, mean, logvar)`` of a KL autoencoder as one forward, so DDP sees the whole step."""

    def __init__(self, autoencoder: KLAutoencoder):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, logvar = self.autoencoder.posterior_params(x)
        return self.autoencoder.decoder(mean + (0.5 * logvar).exp() * noise), mean, logvar


def _adam(params: Any, config: AutoencoderRunConfig, device: torch.device) -> torch.optim.AdamW:
    o = config.optim
    return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, fused=device.type == "cuda")


class AutoencoderTrainer(TrainingLoop):
    """Trains a KLAutoencoder from an AutoencoderRunConfig; ``run()`` resumes from the latest checkpoint."""

    def __init__(self, config: AutoencoderRunConfig, data: ImageData | None = None):
        super().__init__(config)
        self.data = data if data is not None else self._load_data()
        channels, height, width = self.data.images.shape[1:]
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
        self.optimizer = _adam(self.model.parameters(), config, self.device)
        self.disc = None
        if config.loss.gan_weight > 0:
            self.disc = PatchDiscriminator(channels, config.loss.disc_channels).to(self.device)
            self.disc_optimizer = _adam(self.disc.parameters(), config, self.device)
        resumed = self.find_resume_checkpoint()
        if resumed:
            self._load(resumed)
        self.train_model = self.wrap(_Reconstruct(self.model))
        self.train_disc = self.wrap(self.disc) if self.disc is not None else None
        self.latent_shape = (config.model.latent_channels, height // factor, width // factor)

    def _load_data(self) -> ImageData:
        d = self.config.data
        return load_dataset(d.dataset, d.path, d.split, d.image_size, d.channels, d.skip_corrupt)

    # -- checkpoints ---------------------------------------------------------------------------------

    def _load(self, directory: Path) -> None:
        self.model.load_state_dict(ckpt.read_tensors(directory, "model"))
        self.ema.model.load_state_dict(ckpt.read_tensors(directory, "ema"))
        self.optimizer.load_state_dict(ckpt.read_optimizer(directory, "optimizer"))
        if self.disc is not None:
            self.disc.load_state_dict(ckpt.read_tensors(directory, "disc"))
            self.disc_optimizer.load_state_dict(ckpt.read_optimizer(directory, "disc_optimizer"))
        self.step = ckpt.read_state(directory)["step"]
        if self.dist.is_main:
            print(f"resumed from {directory} at step {self.step}")

    def save(self) -> Path:
        """Write a checkpoint of the current step (main rank) and prune old ones."""
        directory = self.run_dir / "checkpoints" / f"step_{self.step:08d}"
        if self.dist.is_main:
            weights = {"model": self.model.state_dict(), "ema": self.ema.model.state_dict()}
            optimizers = {"optimizer": self.optimizer.state_dict()}
            if self.disc is not None:
                weights["disc"] = self.disc.state_dict()
                optimizers["disc_optimizer"] = self.disc_optimizer.state_dict()
            state = {
                "kind": CHECKPOINT_KIND,
                "version": __version__,
                "step": self.step,
                "config": config_to_dict(self.config),
                "data": {"image_shape": list(self.data.images.shape[1:]), "latent_shape": list(self.latent_shape)},
                "rng": {"scheme": "stateless: step s draws from seed (seed, s)", "seed": self.config.train.seed},
            }
            ckpt.save_checkpoint(directory, weights, optimizers, state)
            ckpt.prune_checkpoints(self.run_dir, self.config.train.keep_checkpoints)
        barrier()
        return directory

    # -- one step ------------------------------------------------------------------------------------

    def train_step(self) -> dict[str, torch.Tensor]:
        """One step of the autoencoder (and of the discriminator once the GAN term is on)."""
        loss_cfg, seed = self.config.loss, self.config.train.seed
        indices, flips = self.batch_indices(len(self.data), self.step)
        x, _ = self.data.batch(indices, flips, device=self.device)
        noise_shape = (self.config.train.batch_size, *self.latent_shape)
        noise = torch.randn(noise_shape, generator=generator(self.device, seed, NOISE, self.step), device=self.device)
        torch.manual_seed(derive_seed(seed, MODEL, self.step, self.dist.rank))
        with self.autocast():
            reconstruction, mean, logvar = self.train_model(x, noise[self.rank_slice()])
        reconstruction, error = reconstruction.float(), reconstruction.float() - x
        losses = {"l1": error.abs().mean(), "kl": kl_divergence(mean.float(), logvar.float())}
        total = loss_cfg.l1_weight * losses["l1"] + loss_cfg.kl_weight * losses["kl"]
        if loss_cfg.l2_weight:
            losses["l2"] = error.square().mean()
            total = total + loss_cfg.l2_weight * losses["l2"]
        gan_on = self.disc is not None and self.step >= loss_cfg.gan_start
        if gan_on:
            losses["generator"] = self._generator_loss(reconstruction)
            total = total + loss_cfg.gan_weight * losses["generator"]
        self._optimise(total, self.model, self.optimizer)
        if gan_on:
            losses["discriminator"] = self._discriminator_step(x, reconstruction.detach())
        self.ema.update(self.model, self.step)
        self.step += 1
        return {"loss": total.detach(), **{name: value.detach() for name, value in losses.items()}}

    def _optimise(self, loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.set_learning_rate(optimizer)
        loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

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
        self._optimise(loss, self.disc, self.disc_optimizer)
        return loss.detach()

    # -- pictures ------------------------------------------------------------------------------------

    @torch.no_grad()
    def save_samples(self) -> Path:
        """Originals (top row) and EMA reconstructions (bottom row) to ``RUN/samples/step_XXXXXXXX.png``."""
        images, _ = self.data.batch(torch.arange(PREVIEW_IMAGES), device=self.device)
        reconstructions = self.ema.model.decode(self.ema.model.encode(images))
        path = self.run_dir / "samples" / f"step_{self.step:08d}.png"
        save_grid(torch.cat([images, reconstructions]).cpu(), path, columns=PREVIEW_IMAGES)
        return path
