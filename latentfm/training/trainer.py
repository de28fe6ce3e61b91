"""The flow-matching trainer: AdamW, warm-up, clipping, EMA, bf16 autocast, DDP, exact resume.

The objective (``latentfm.flow.FlowObjective``) draws the source noise and times of step ``s`` for the whole
global batch from ``(seed, s)`` like the batch itself (see ``latentfm.training.loop``), so resumed and
multi-rank runs match a single run exactly; the task (``latentfm.tasks``) says what the condition is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from latentfm import checkpoint as ckpt
from latentfm.autoencoders import Autoencoder, LatentNorm, build_autoencoder
from latentfm.autoencoders.base import autoencoder_identity, latent_norm_for
from latentfm.condition import Condition
from latentfm.config import Config
from latentfm.data import BatchRequest, EncodedImages, ImageBatch, ImageDataset, LatentCache, read_batches
from latentfm.data.latent_cache import check_cache_autoencoder
from latentfm.errors import LatentFMError
from latentfm.flow import FlowObjective, FlowSample, build_coupling, build_path, build_time_sampler, flow_matching_loss
from latentfm.image_io import save_grid
from latentfm.models.build import build_model
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import SamplerSettings
from latentfm.seeding import derive_seed, generator
from latentfm.tasks import TrainingBatch, build_task
from latentfm.training.ema import EMA
from latentfm.training.loop import ENCODE, INIT, MODEL, NOISE, NORM, TASK, TrainingLoop


class Trainer(TrainingLoop):
    """Trains a flow model from a Config; ``run()`` resumes from the run directory's latest checkpoint.

    ``data`` may be given directly (an ``ImageDataset``) instead of through ``config.data``.
    ``make_evaluation(image_shape, device)`` builds the evaluator that scores EMA samples every ``eval.every``
    steps (``latentfm.evaluation.training_evaluation`` makes it from the ``eval`` section).
    """

    checkpoint_kind = "flow"

    def __init__(self, config: Config, data: ImageDataset | None = None, make_evaluation: Callable | None = None):
        super().__init__(config)
        train = config.train
        self.task = build_task(config.task)
        self.sampler: SamplerSettings = config.sample
        self.autoencoder, self.latents = self._latent_source(data)
        self.autoencoder_identity = autoencoder_identity(self.autoencoder, config.autoencoder.kind)
        self.low_latents = self._low_latent_cache()
        if isinstance(self.latents, LatentCache):
            check_cache_autoencoder(self.latents, self.autoencoder_identity)
            if self.task.needs_images:
                raise LatentFMError(
                    f"task.kind={self.task.kind} builds its condition from the images: unset data.latent_cache"
                )
        if self.task.needs_maps and not self.latents.data.has_maps:
            raise LatentFMError("task.map_source=data needs maps: set data.maps_path to a folder of class-id PNGs")
        if len(self.latents) < train.batch_size:
            raise LatentFMError(f"train.batch_size={train.batch_size} exceeds the {len(self.latents)} training items")
        flow = config.flow
        self.objective = FlowObjective(
            build_coupling(flow.coupling),
            build_path(flow.path, flow.sigma_min),
            build_time_sampler(flow.t_sampler, flow.t_loc, flow.t_scale),
        )
        resumed = self.run_dir.resume_point(config)
        self.latent_norm = self.initial_latent_norm(resumed)
        self.latent_shape = tuple(self.latents.batch(torch.arange(1), device=self.device)[0].shape[1:])
        torch.manual_seed(derive_seed(train.seed, INIT))
        self.num_classes = self.latents.num_classes if self.task.uses_labels else 0
        self.model = self.build_network().to(self.device)
        self.ema = EMA(self.model, train.ema_decay, train.ema_warmup)
        self.optimizer = self.adamw(self.model.parameters())
        if resumed:
            self.load(resumed)
        self.train_model = self.wrap(self.model)
        if config.eval.every and make_evaluation is None:
            raise LatentFMError("eval.every is set but no evaluator was given (`latentfm train` builds it)")
        image_shape = tuple(self.latents.image_shape)
        if config.eval.every:
            self._check_samples_without_inputs(image_shape)
        self.evaluation = None if make_evaluation is None else make_evaluation(image_shape, self.device)
        self.eval_every = config.eval.every if self.evaluation is not None else 0

    def initial_latent_norm(self, resumed: Path | None) -> LatentNorm:
        """The resumed checkpoint's latent normalisation, else the autoencoder's or the data's moments."""
        if resumed:
            return LatentNorm(**ckpt.read_state(resumed, self.checkpoint_kind).latent_norm)
        return latent_norm_for(self.autoencoder, self.config.autoencoder.normalize, self._moments)

    def build_network(self) -> torch.nn.Module:
        """The network this trainer trains: the flow model of the ``model`` section."""
        condition_inputs = self.task.model_inputs(self.latent_shape, tuple(self.latents.image_shape))
        shape = self.latent_shape
        return build_model(self.config.model, shape[0], shape[1], self.num_classes, **condition_inputs)

    def _check_samples_without_inputs(self, image_shape: tuple[int, ...]) -> None:
        """Refuse before training when ``eval.every`` would ask the task for samples it never learned to make."""
        try:
            self.task.sampling_condition(None, None, self.encode, (1, *image_shape))
        except LatentFMError as error:
            raise LatentFMError(f"eval.every samples without task inputs, but {error}; or set eval.every=0") from None

    def evaluate(self) -> dict[str, Any]:
        """FD (and class accuracy) of EMA samples drawn with the recipe's sampler (the ``sample`` section)."""
        return self.evaluation(self.pipeline(), self.config.eval.samples, self.config.train.seed, self.sampler)

    def _latent_source(self, data: ImageDataset | None) -> tuple[Autoencoder, LatentCache | EncodedImages]:
        """The autoencoder and where latents come from: ``data.latent_cache`` if set, else images encoded
        on the fly (``data`` if given, else ``config.data``)."""
        spec, cache_dir = self.config.autoencoder, self.config.data.latent_cache
        if cache_dir:
            cache = LatentCache(cache_dir)
            return build_autoencoder(spec, image_channels=cache.image_shape[0]).to(self.device), cache
        if data is None:
            data = self.load_images()
        autoencoder = build_autoencoder(spec, image_channels=data.image_shape[0]).to(self.device)
        return autoencoder, EncodedImages(data, autoencoder)

    def _low_latent_cache(self) -> LatentCache | None:
        """``data.low_latent_cache``, checked to hold the training images down-sampled, by this autoencoder."""
        directory = self.config.data.low_latent_cache
        if bool(directory) != self.task.needs_low_latents:
            raise LatentFMError(
                "data.low_latent_cache is read only with task.kind=upsample, task.upsample_low_source=cache; "
                "set both or neither"
            )
        if not directory:
            return None
        low = LatentCache(directory)
        check_cache_autoencoder(low, self.autoencoder_identity)
        if isinstance(self.latents, LatentCache):
            fingerprint = self.latents.manifest["dataset"]["fingerprint"]
        else:
            fingerprint = self.latents.data.fingerprint()
        if low.manifest["dataset"]["fingerprint"] != fingerprint:
            raise LatentFMError(f"data.low_latent_cache {directory} holds other images than the training data")
        if low.downsample < 2:
            raise LatentFMError(
                f"data.low_latent_cache {directory} holds the images as loaded; encode them with --downsample F"
            )
        return low

    def _moments(self) -> tuple[list[float], list[float]]:
        """Per-channel latent moments: the cache's, or those of ``norm_batches`` random training batches."""
        if isinstance(self.latents, LatentCache):
            return self.latents.moments()
        order = torch.randperm(len(self.latents), generator=generator("cpu", self.config.train.seed, NORM))
        size = self.config.train.batch_size  # the same on every rank and for any number of ranks
        requests = [BatchRequest(rows) for rows in order[: self.config.autoencoder.norm_batches * size].split(size)]
        images = read_batches(self.latents.data, requests, self.config.data.workers, self.device)
        torch.manual_seed(derive_seed(self.config.train.seed, NORM))  # posterior samples
        return LatentNorm.moments(self.autoencoder.encode(batch.floats()).float() for batch in images)

    # -- checkpoints ---------------------------------------------------------------------------------

    def checkpoint_modules(self) -> dict[str, torch.nn.Module]:
        """The flow model and its EMA."""
        return {"model": self.model, "ema": self.ema.model}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The AdamW optimizer."""
        return {"optimizer": self.optimizer}

    def checkpoint_state(self) -> dict[str, Any]:
        """Latent normalisation, data shapes and the autoencoder's identity (to refuse other weights later)."""
        return {
            "kind": self.checkpoint_kind,
            "latent_norm": {"shift": self.latent_norm.shift, "scale": self.latent_norm.scale},
            "data": ckpt.DataShapes(
                image_shape=list(self.latents.image_shape),
                latent_shape=list(self.latent_shape),
                num_classes=self.num_classes,
                class_names=self.latents.class_names,
            ),
            "autoencoder": self.autoencoder_identity,
        }

    # -- one step ------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised latents of images in [-1, 1] (what a task's condition encodes)."""
        return self.latent_norm.normalize(self.autoencoder.encode(images.to(self.device)).float())

    def training_batch(self, step: int) -> TrainingBatch:
        """This rank's part of ``step``'s batch, drawn statelessly from the global batch."""
        indices, flips = self.batch_indices(len(self.latents), step)
        part = self.rank_slice()
        images = None if isinstance(self.latents, LatentCache) else self.step_images(self.latents.data, step)
        return self._batch(step, indices, flips, range(part.start, part.stop), images)

    @torch.no_grad()
    def _batch(
        self,
        step: int,
        indices: torch.Tensor,
        flips: torch.Tensor | None,
        rows: range,
        images: ImageBatch | None = None,
    ) -> TrainingBatch:
        """The task's view of dataset ``indices`` (global ``rows`` of ``step``'s batch; their ``images`` as read,
        else read here): normalised latents, labels, and the images and maps when the task needs them."""
        seed = self.config.train.seed
        if images is None and isinstance(self.latents, EncodedImages):
            images = self.latents.data.read(indices, flips).to(self.device)
        torch.manual_seed(derive_seed(seed, ENCODE, step, self.dist.rank))  # posterior samples
        pixels = maps = None
        if images is None:
            latents, labels = self.latents.batch(indices, flips, device=self.device)
        else:
            pixels, labels, maps = images.floats(), images.labels, images.maps
            latents = self.autoencoder.encode(pixels).float()
        needs_images = self.task.needs_images
        low = None if self.low_latents is None else self.low_latents.batch(indices, flips, device=self.device)[0]
        return TrainingBatch(
            x1=self.latent_norm.normalize(latents),
            labels=labels,
            images=pixels if needs_images else None,
            maps=maps if needs_images else None,
            low_latents=None if low is None else self.latent_norm.normalize(low),
            rows=torch.tensor(list(rows), device=self.device),
            seeds=[derive_seed(seed, TASK, step, row) for row in rows] if needs_images else None,
        )

    def path_batch(self) -> tuple[Condition, FlowSample]:
        """This step's condition and its points on the path (the task's source, the coupling, the times)."""
        batch, part = self.training_batch(self.step), self.rank_slice()
        noise = generator(self.device, self.config.train.seed, NOISE, self.step)
        cond = self.task.training_condition(batch, self.encode)
        source = lambda x0: self.task.source(cond, x0)  # noqa: E731
        groups = self.task.coupling_groups(batch)
        return cond, self.objective(batch.x1, noise, groups, self.config.train.batch_size, part, source)

    def finish_step(self, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """Update the network with ``loss`` (its EMA too unless the step was skipped) and move to the next step."""
        if self.optimise(loss, self.model, self.optimizer):
            self.ema.update(self.model, self.step)
        self.step += 1
        return {"loss": loss.detach()}

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the detached loss."""
        cond, flow = self.path_batch()
        torch.manual_seed(derive_seed(self.config.train.seed, MODEL, self.step, self.dist.rank))
        with self.autocast():
            predicted = self.train_model(flow.x_t, flow.t, cond)
        return self.finish_step(flow_matching_loss(predicted, flow.u_t))

    # -- sampling ------------------------------------------------------------------------------------

    def pipeline(self) -> FlowPipeline:
        """The EMA model as a FlowPipeline for sampling."""
        return FlowPipeline(
            model=self.ema.model,
            autoencoder=self.autoencoder,
            latent_norm=self.latent_norm,
            latent_shape=self.latent_shape,
            num_classes=self.num_classes,
            image_shape=tuple(self.latents.image_shape),
            class_names=self.latents.class_names,
            autocast_dtype=self.autocast_dtype,
            task=self.task,
            sampler=self.sampler,
            autoencoder_identity=self.autoencoder_identity,
        )

    def save_samples(self) -> Path:
        """A grid of EMA samples to ``RUN/samples/step_XXXXXXXX.png``: one row per class, or, for a task that
        takes inputs, samples for the first training images' inputs (their masks, their maps)."""
        per_class = self.config.train.sample_per_class
        classes = max(1, self.num_classes)
        n = min(classes * per_class, len(self.latents))
        preview = self._batch(0, torch.arange(n), None, range(n))  # step 0's task draws for the first images
        inputs = self.task.preview_inputs(preview)
        labels = preview.labels if self.num_classes else None
        if inputs is None:
            labels = torch.arange(classes).repeat_interleave(per_class) if self.num_classes else None
            n = classes * per_class
        images, _ = self.pipeline().generate(
            labels, n=n, seed=self.config.train.seed, settings=self.sampler, inputs=inputs
        )
        path = self.run_dir.samples_file(self.step)
        save_grid(images, path, columns=per_class)
        return path
