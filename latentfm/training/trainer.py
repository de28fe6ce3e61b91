"""The flow-matching training loop: AdamW, warm-up, clipping, EMA, bf16 autocast, DDP, exact resume.

Randomness is stateless: the batch indices, source noise, times and flips of step ``s`` are drawn for the
whole global batch from seed ``(seed, s)`` and each rank takes its slice; model-internal randomness
(label dropout) uses the global RNG reseeded with ``(seed, s, rank)``. An interrupted run resumed from
a checkpoint therefore replays exactly what an uninterrupted one does, and ``N`` ranks with batch ``B/N``
see the same samples as one process with batch ``B``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from latentfm import __version__
from latentfm.autoencoders import LatentNorm, build_autoencoder
from latentfm.config import Config, config_from_dict, config_to_dict
from latentfm.data import ImageData, load_dataset
from latentfm.errors import LatentFMError
from latentfm.flow import build_path, build_time_sampler, flow_matching_loss
from latentfm.image_io import save_grid
from latentfm.models.build import build_model
from latentfm.models.conditioning import Condition
from latentfm.pipeline import FlowPipeline
from latentfm.seeding import derive_seed, generator
from latentfm.training import checkpoint as ckpt
from latentfm.training.distributed import barrier, mean_across_ranks, setup_distributed
from latentfm.training.ema import EMA

# Keys that may change when a run is resumed; any other difference is refused.
# Independent random streams, each seeded from (train.seed, stream, ...).
_ORDER, _STEP, _NOISE, _MODEL, _NORM, _INIT = range(6)

RESUMABLE_KEYS = {
    "train.steps",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.out_dir",
    "train.device",
    "train.compile",
    "sample",
}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def config_difference(saved: Config, current: Config) -> str | None:
    """The first key whose change would break an exact resume, or None."""
    old, new = _flatten(config_to_dict(saved)), _flatten(config_to_dict(current))
    for key in sorted(old):
        resumable = key in RESUMABLE_KEYS or key.split(".")[0] in RESUMABLE_KEYS
        if not resumable and old[key] != new.get(key):
            return f"{key}: {old[key]!r} in the checkpoint, {new.get(key)!r} now"
    return None


def learning_rate(config: Config, step: int) -> float:
    """Linear warm-up to ``optim.lr``, then constant or cosine decay to ``lr * min_lr_ratio``."""
    optim, total = config.optim, config.train.steps
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    if optim.schedule != "cosine":
        raise LatentFMError(f"optim.schedule={optim.schedule!r} is unknown; use 'constant' or 'cosine'")
    progress = min(1.0, (step - optim.warmup_steps) / max(1, total - optim.warmup_steps))
    floor = optim.lr * optim.min_lr_ratio
    return floor + 0.5 * (optim.lr - floor) * (1 + math.cos(math.pi * progress))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype: bf16 on GPUs that support it under ``auto``; None means float32."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    raise LatentFMError(f"train.precision={precision!r} is unknown; use 'auto', 'fp32' or 'bf16'")


class Trainer:
    """Trains a flow model from a Config; ``run()`` resumes from the run directory's latest checkpoint.

    ``data`` may be given directly (an in-memory ImageData) instead of through ``config.data``.
    """

    def __init__(self, config: Config, data: ImageData | None = None):
        self.config, train = config, config.train
        self.dist = setup_distributed(train.device)
        self.device, self.run_dir = self.dist.device, Path(train.out_dir)
        if train.batch_size % self.dist.world_size:
            raise LatentFMError(f"train.batch_size={train.batch_size} must divide by the {self.dist.world_size} ranks")
        self.local_batch = train.batch_size // self.dist.world_size
        self.autocast_dtype = resolve_precision(train.precision, self.device)
        self.data = self._check_data(data if data is not None else self._load_data())
        self.autoencoder = build_autoencoder(
            {"kind": config.autoencoder.kind}, image_channels=self.data.images.shape[1]
        )
        self.path = build_path(config.flow.path, config.flow.sigma_min)
        self.draw_times = build_time_sampler(config.flow.t_sampler, config.flow.t_loc, config.flow.t_scale)
        self.step = 0
        self._order: tuple[int, torch.Tensor] | None = None
        resumed = self._find_resume_checkpoint()
        self.latent_norm = LatentNorm(**ckpt.read_state(resumed)["latent_norm"]) if resumed else self._estimate_norm()
        self.latent_shape = tuple(self._encode(self.data.batch(torch.arange(1))[0]).shape[1:])
        torch.manual_seed(derive_seed(train.seed, _INIT))
        self.model = build_model(config.model, self.latent_shape[0], self.latent_shape[1], self.data.num_classes)
        self.model.to(self.device)
        self.ema = EMA(self.model, train.ema_decay, train.ema_warmup)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=config.optim.lr,
            betas=config.optim.betas,
            weight_decay=config.optim.weight_decay,
            fused=self.device.type == "cuda",
        )
        if resumed:
            self._load(resumed)
        self.train_model = self._wrap(self.model)

    def _load_data(self) -> ImageData:
        d = self.config.data
        return load_dataset(d.dataset, d.path, d.split, d.image_size, d.channels, d.skip_corrupt)

    def _check_data(self, data: ImageData) -> ImageData:
        if len(data) < self.config.train.batch_size:
            raise LatentFMError(f"train.batch_size={self.config.train.batch_size} exceeds the {len(data)} images")
        if data.skipped and self.dist.is_main:
            print(f"skipped {data.skipped} unreadable image files")
        return data

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.config.train.compile:
            model = torch.compile(model)
        if self.dist.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=device_ids)
        return model

    @torch.no_grad()
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.encode(images.to(self.device)).float()

    def _estimate_norm(self) -> LatentNorm:
        order = torch.randperm(len(self.data), generator=generator("cpu", self.config.train.seed, _NORM))
        size = self.config.train.batch_size  # the same on every rank and for any number of ranks
        batches = order[: self.config.autoencoder.norm_batches * size].split(size)
        latents = (self._encode(self.data.batch(indices)[0]) for indices in batches)
        return LatentNorm.estimate(latents, self.config.autoencoder.normalize)

    # -- checkpoints ---------------------------------------------------------------------------------

    def _find_resume_checkpoint(self) -> Path | None:
        found = ckpt.list_checkpoints(self.run_dir)
        if not found:
            return None
        saved = config_from_dict(ckpt.read_state(found[-1])["config"])
        difference = config_difference(saved, self.config)
        if difference:
            raise LatentFMError(
                f"{self.run_dir} holds a run with another config ({difference}); "
                "choose a new train.out_dir or restore the old value"
            )
        return found[-1]

    def _load(self, directory: Path) -> None:
        state = ckpt.read_state(directory)
        self.model.load_state_dict(ckpt.read_tensors(directory, "model"))
        self.ema.model.load_state_dict(ckpt.read_tensors(directory, "ema"))
        optimizer_state = ckpt.optimizer_from_tensors(
            ckpt.read_tensors(directory, "optimizer"), state["optimizer_param_groups"]
        )
        self.optimizer.load_state_dict(optimizer_state)
        self.step = state["step"]
        if self.dist.is_main:
            print(f"resumed from {directory} at step {self.step}")

    def _state(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "step": self.step,
            "config": config_to_dict(self.config),
            "latent_norm": {"shift": self.latent_norm.shift, "scale": self.latent_norm.scale},
            "data": {
                "num_classes": self.data.num_classes,
                "class_names": self.data.class_names,
                "image_shape": list(self.data.images.shape[1:]),
                "latent_shape": list(self.latent_shape),
            },
            "rng": {
                "scheme": "stateless: step s draws from seed (seed, s) and (seed, s, rank)",
                "seed": self.config.train.seed,
            },
        }

    def save(self) -> Path:
        """Write a checkpoint of the current step (main rank) and prune old ones."""
        directory = self.run_dir / "checkpoints" / f"step_{self.step:08d}"
        if self.dist.is_main:
            ckpt.save_checkpoint(
                directory,
                self.model.state_dict(),
                self.ema.model.state_dict(),
                self.optimizer.state_dict(),
                self._state(),
            )
            ckpt.prune_checkpoints(self.run_dir, self.config.train.keep_checkpoints)
        barrier()
        return directory

    # -- one step ------------------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """The shuffled order of the dataset in ``epoch``, drawn once per epoch from ``(seed, epoch)``."""
        if self._order is None or self._order[0] != epoch:
            order = torch.randperm(len(self.data), generator=generator("cpu", self.config.train.seed, _ORDER, epoch))
            self._order = (epoch, order)
        return self._order[1]

    def _batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """This rank's (x0, t, x1, labels) for ``step``, drawn statelessly from the global batch."""
        n, size, seed = len(self.data), self.config.train.batch_size, self.config.train.seed
        epoch, position = divmod(step, n // size)
        indices = self._epoch_order(epoch)[position * size : (position + 1) * size]
        mine = slice(self.dist.rank * self.local_batch, (self.dist.rank + 1) * self.local_batch)
        flips = None
        if self.config.data.hflip:
            flips = (torch.rand(size, generator=generator("cpu", seed, _STEP, step)) < 0.5)[mine]
        images, labels = self.data.batch(indices[mine], flips, device=self.device)
        x1 = self.latent_norm.normalize(self._encode(images))
        device_rng = generator(self.device, seed, _NOISE, step)
        x0 = torch.randn((size, *x1.shape[1:]), generator=device_rng, device=self.device)[mine]
        t = self.draw_times(size, device_rng, self.device)[mine]
        return x0, t, x1, labels

    def train_step(self) -> torch.Tensor:
        """One optimisation step; returns the detached loss."""
        x0, t, x1, labels = self._batch(self.step)
        torch.manual_seed(derive_seed(self.config.train.seed, _MODEL, self.step, self.dist.rank))
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.config, self.step)
        x_t, target = self.path.sample(x0, x1, t)
        with torch.autocast(
            self.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None
        ):
            predicted = self.train_model(x_t, t, Condition(labels=labels))
        loss = flow_matching_loss(predicted, target)
        loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.model, self.step)
        self.step += 1
        return loss.detach()

    # -- the loop ------------------------------------------------------------------------------------

    def pipeline(self) -> FlowPipeline:
        """The EMA model as a FlowPipeline for sampling."""
        return FlowPipeline(
            model=self.ema.model,
            autoencoder=self.autoencoder,
            latent_norm=self.latent_norm,
            latent_shape=self.latent_shape,
            num_classes=self.data.num_classes,
            class_names=self.data.class_names,
            autocast_dtype=self.autocast_dtype,
        )

    def save_samples(self) -> Path:
        """A grid of EMA samples, one row per class, to ``RUN/samples/step_XXXXXXXX.png``."""
        s = self.config.sample
        classes = max(1, self.data.num_classes)
        labels = torch.arange(classes).repeat_interleave(s.per_class) if self.data.num_classes else None
        images, _ = self.pipeline().generate(
            labels, n=classes * s.per_class, seed=self.config.train.seed, solver=s.solver, nfe=s.nfe, cfg=s.cfg
        )
        path = self.run_dir / "samples" / f"step_{self.step:08d}.png"
        save_grid(images, path, columns=s.per_class)
        return path

    def _log(self, loss_sum: torch.Tensor, window: int, seconds: float, bar: tqdm) -> None:
        """Append the mean loss of the last ``window`` steps (over all ranks) to ``metrics.jsonl``."""
        mean_loss = float(mean_across_ranks(loss_sum / window))
        record = {
            "step": self.step,
            "loss": mean_loss,
            "lr": learning_rate(self.config, self.step - 1),
            "images_per_s": window * self.config.train.batch_size / seconds,
        }
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{mean_loss:.4f}")

    def run(self, until_step: int | None = None) -> Path:
        """Train to ``train.steps`` (or stop early at ``until_step``); returns the last checkpoint.

        An interrupted single-process run (Ctrl-C) saves a checkpoint of the step it reached first.
        """
        train = self.config.train
        first, last = self.step, min(train.steps, until_step or train.steps)
        bar = tqdm(total=last, initial=self.step, desc="training", disable=not self.dist.is_main)
        loss_sum, window, clock = torch.zeros((), device=self.device), 0, time.perf_counter()
        try:
            while self.step < last:
                loss_sum += self.train_step()
                window += 1
                bar.update(1)
                if self.step % train.log_every == 0 or self.step == last:
                    self._log(loss_sum, window, time.perf_counter() - clock, bar)
                    loss_sum, window, clock = torch.zeros((), device=self.device), 0, time.perf_counter()
                if train.sample_every and self.step % train.sample_every == 0 and self.dist.is_main:
                    self.save_samples()
                if train.checkpoint_every and self.step % train.checkpoint_every == 0 and self.step != last:
                    self.save()
        except KeyboardInterrupt:
            if self.dist.world_size == 1 and self.step > first:
                print(f"\ninterrupted: saved {self.save()}")
            raise
        finally:
            bar.close()
        return self.save()
