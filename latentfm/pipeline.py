"""A trained flow model with its autoencoder and latent normalisation: the object that generates images."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from latentfm.atomic import write_bytes_atomic
from latentfm.autoencoders import Autoencoder, LatentNorm, build_autoencoder
from latentfm.autoencoders.base import autoencoder_identity
from latentfm.checkpoint import GENERATORS, load_weights, read_state, resolve_checkpoint, weights_sha256
from latentfm.condition import Condition
from latentfm.config import AutoencoderConfig, config_from_dict
from latentfm.errors import LatentFMError, first_difference
from latentfm.image_io import save_grid, to_uint8, write_samples
from latentfm.models.build import build_model
from latentfm.models.refiner import build_refiner
from latentfm.pretrained import model_directory
from latentfm.progress import progress_bar
from latentfm.sampling import (
    GuidedRefiner,
    GuidedVelocity,
    SamplerSettings,
    SampleStats,
    sample,
)
from latentfm.sampling.schedules import explicit_steps
from latentfm.seeding import source_noise, step_noise
from latentfm.tasks import Inputs, Task, build_task


def _check_autoencoder(autoencoder: Autoencoder, kind: str, trained_with: dict | None, directory: Path) -> None:
    """Refuse to decode with other autoencoder weights than the model was trained with."""
    if trained_with is None:
        return
    difference = first_difference(trained_with, autoencoder_identity(autoencoder, kind), keys=["weights_sha256"])
    if difference is not None:
        raise LatentFMError(
            f"{directory} was trained with autoencoder weights {difference.old[:12]}, but its "
            f"autoencoder.* config now loads {difference.new[:12]}; restore the original weights files"
        )


@dataclass
class Latents:
    """Normalised latents that travel between pipelines (a cascade) or files (``latents.npz``) without decoding:
    the values, their normalisation and the identity of the autoencoder that made them."""

    values: torch.Tensor
    latent_norm: LatentNorm
    autoencoder: dict[str, Any]

    def save(self, path: Path) -> None:
        """Write ``latents.npz`` (``latents`` float32, ``shift``, ``scale``, the autoencoder's identity), atomically."""
        buffer = io.BytesIO()
        norm = {"shift": np.array(self.latent_norm.shift), "scale": np.array(self.latent_norm.scale)}
        identity = np.array(json.dumps(self.autoencoder, sort_keys=True))
        np.savez_compressed(buffer, latents=self.values.float().cpu().numpy(), **norm, autoencoder=identity)
        write_bytes_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Latents:
        """Read a ``latents.npz``; anything else is one line naming the file."""
        try:
            with np.load(path) as data:
                values, shift, scale = (data[key] for key in ("latents", "shift", "scale"))
                identity = json.loads(str(data["autoencoder"]))
        except (OSError, KeyError, ValueError) as err:
            raise LatentFMError(f"{path} is not a latents.npz of `latentfm sample --latents` ({err})") from None
        return cls(torch.from_numpy(values), LatentNorm(shift.tolist(), scale.tolist()), identity)


@dataclass
class FlowPipeline:
    """Everything needed to turn labels and a seed into images in [-1, 1].

    ``sampler`` is the recipe's sampler (the checkpoint's ``sample`` section); ``generate`` uses it unless
    given other settings.

    Example:
        >>> pipe = FlowPipeline.from_checkpoint("runs/digits")  # doctest: +SKIP
        >>> settings = pipe.sampler.with_(nfe=8, cfg=2.0)  # doctest: +SKIP
        >>> images, stats = pipe.generate(labels=torch.arange(10), seed=0, settings=settings)  # doctest: +SKIP
    """

    model: nn.Module
    autoencoder: Autoencoder
    latent_norm: LatentNorm
    latent_shape: tuple[int, int, int]
    num_classes: int
    image_shape: tuple[int, int, int] | None = None  # [C, H, W] of decoded images
    class_names: list[str] = field(default_factory=list)
    autocast_dtype: torch.dtype | None = None
    task: Task = field(default_factory=build_task)
    sampler: SamplerSettings = field(default_factory=SamplerSettings)
    autoencoder_identity: dict[str, Any] | None = None  # of the weights the model was trained with
    refiner: nn.Module | None = None  # FlowTurbo's velocity refiner of this model (``with_refiner``)
    fewstep_nfe: int | None = None  # a few-step model (``latentfm train-fewstep``): the most NFE it was tuned for

    @property
    def device(self) -> torch.device:
        """The device the model's weights live on."""
        return next(self.model.parameters()).device

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, device: str | torch.device = "cpu", use_ema: bool = True
    ) -> FlowPipeline:
        """Load a checkpoint directory, or the latest checkpoint of a run directory."""
        directory = resolve_checkpoint(path)
        state = read_state(directory, GENERATORS)
        config = config_from_dict(state.config)
        _root_autoencoder_files(config.autoencoder, directory)
        data = state.data
        task = build_task(config.task)
        condition_inputs = task.model_inputs(tuple(data.latent_shape), tuple(data.image_shape))
        model = build_model(
            config.model, data.latent_shape[0], data.latent_shape[1], data.num_classes, **condition_inputs
        )
        load_weights(model, directory, "ema" if use_ema else "model")
        model.requires_grad_(False)  # sampling and schedule search differentiate inputs, never weights
        autoencoder = build_autoencoder(config.autoencoder, image_channels=data.image_shape[0]).to(device)
        _check_autoencoder(autoencoder, config.autoencoder.kind, state.autoencoder, directory)
        return cls(
            model=model.to(device).eval(),
            autoencoder=autoencoder,
            latent_norm=LatentNorm(**state.latent_norm),
            latent_shape=tuple(data.latent_shape),
            num_classes=data.num_classes,
            image_shape=tuple(data.image_shape),
            class_names=data.class_names,
            task=task,
            sampler=config.sample,
            autoencoder_identity=state.autoencoder,
            fewstep_nfe=config.fewstep.max_nfe if state.kind == "fewstep" else None,
        )

    @classmethod
    def from_pretrained(cls, name: str | Path, device: str | torch.device = "cpu") -> FlowPipeline:
        """Load a model by name: a built-in model (``latentfm models``), a directory written by ``latentfm export``
        (its weights checked against its card), a run or checkpoint directory, or a Hugging Face Hub id.

        Example:
            >>> pipe = FlowPipeline.from_pretrained("fashion-mnist")
            >>> pipe.class_names[7], pipe.sampler.solver
            ('Sneaker', 'midpoint')
        """
        return cls.from_checkpoint(model_directory(name), device=device)

    def to(self, device: str | torch.device) -> FlowPipeline:
        """This pipeline on ``device`` (its model, autoencoder and refiner moved, nothing reloaded)."""
        refiner = None if self.refiner is None else self.refiner.to(device)
        return replace(self, model=self.model.to(device), autoencoder=self.autoencoder.to(device), refiner=refiner)

    def with_refiner(self, path: str | Path) -> FlowPipeline:
        """This pipeline with the velocity refiner of a ``latentfm train-refiner`` run or checkpoint (its EMA
        weights), for turbo programs with refiner steps; a refiner trained for other weights is refused."""
        directory = resolve_checkpoint(path)
        state = read_state(directory, "refiner")
        if (state.teacher or {}).get("weights_sha256") != weights_sha256(self.model):
            teacher = (state.teacher or {}).get("checkpoint", "another model")
            raise LatentFMError(
                f"refiner {directory} was trained for other weights ({teacher}), not this checkpoint's; "
                "train one for it with latentfm train-refiner --teacher CHECKPOINT"
            )
        config = config_from_dict(state.config)
        inputs = self.task.model_inputs(self.latent_shape, self.image_shape)
        refiner = build_refiner(config.refiner, config.model, self.latent_shape, self.num_classes, **inputs)
        load_weights(refiner, directory, "ema")
        return replace(self, refiner=refiner.to(self.device).eval().requires_grad_(False))

    def _check_labels(self, labels: torch.Tensor | None) -> None:
        if labels is None:
            return
        if self.num_classes == 0:
            raise LatentFMError("this model is unconditional; do not pass labels")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise LatentFMError(f"labels must lie in 0..{self.num_classes - 1}, got {labels.tolist()[:10]}")

    def velocity(
        self,
        labels: torch.Tensor | None = None,
        cfg: float = 1.0,
        interval: tuple[float, float] | None = None,
        inputs: Inputs | None = None,
        n: int | None = None,
    ) -> GuidedVelocity:
        """The guided ``velocity(x, t)`` of the model for a batch of ``n`` samples (default: one per label or
        input) with ``labels`` and the task's ``inputs`` (see ``GuidedVelocity``; the task says what guidance
        drops)."""
        n = n if n is not None else _batch_size(labels, inputs)
        labels = None if labels is None else labels.to(self.device)
        inputs = None if inputs is None else {name: value.to(self.device) for name, value in inputs.items()}
        shape = (n, *(self.image_shape or ()))
        cond = self.task.sampling_condition(labels, inputs, self.encode, shape).to(self.device)
        uncond = self.task.unconditional(cond, self.num_classes)
        return GuidedVelocity(self.model_velocity, cond, cfg, uncond, interval)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised latents of images in [-1, 1] (NCHW)."""
        return self.latent_norm.normalize(self.autoencoder.encode(images.to(self.device)).float())

    def cycled_labels(self, n: int) -> torch.Tensor | None:
        """``n`` labels cycling through the classes (None for an unconditional model)."""
        return torch.arange(n) % self.num_classes if self.num_classes else None

    def source(self, n: int, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        """The source noise of samples ``first_index .. first_index + n - 1``, each seeded by ``(seed, index)``."""
        return source_noise(seed, range(first_index, first_index + n), self.latent_shape).to(self.device)

    @torch.no_grad()
    def latents(
        self,
        labels: torch.Tensor | None = None,
        n: int | None = None,
        seed: int = 0,
        settings: SamplerSettings | None = None,
        batch_size: int = 256,
        first_index: int = 0,
        progress: bool = False,
        decode: bool = False,
        inputs: Inputs | None = None,
    ) -> tuple[torch.Tensor, SampleStats]:
        """Normalised latents for ``labels`` (or ``n`` unconditional samples); with ``decode``, images in
        [-1, 1] on the CPU, decoded batch by batch.

        Sample ``i`` starts from noise seeded by ``(seed, first_index + i)``, so results do not depend
        on the batch size. The sampler is ``settings`` (default: the recipe's ``sampler``; change a field with
        ``pipe.sampler.with_(nfe=4)``). ``inputs``
        are the task's per-sample inputs (``image`` and ``mask`` to inpaint, ``map`` to follow), one row per
        sample. Returns the latents (or images) and the stats of the last batch (NFE is the same for all).
        """
        self._check_labels(labels)
        total = len(labels) if labels is not None else n
        if not total:
            raise LatentFMError("nothing to generate: give labels or n > 0")
        for name, value in (inputs or {}).items():
            if len(value) != total:
                raise LatentFMError(f"{len(value)} {name} inputs for {total} samples: give one per sample")
        settings = settings or self.sampler
        self._check_sampler(settings)
        starts = range(0, total, batch_size)
        bar = progress_bar(desc=f"generating {total} samples", unit="call", show=progress)  # per velocity call
        parts, stats = [], None
        for start in starts:
            stop = min(start + batch_size, total)
            batch_labels = None if labels is None else labels[start:stop]
            batch_inputs = None if inputs is None else {name: value[start:stop] for name, value in inputs.items()}
            velocity = self.velocity(batch_labels, settings.cfg, settings.guidance_interval, batch_inputs, stop - start)
            velocity.progress = bar
            x0 = self.task.source(velocity.cond, self.source(stop - start, seed, first_index + start))
            refine = None if self.refiner is None else GuidedRefiner(self.refiner_velocity, velocity)
            indices = range(first_index + start, first_index + stop)
            noise = lambda step, indices=indices: step_noise(seed, indices, step, self.latent_shape)  # noqa: E731
            z, stats = sample(velocity, x0, settings=settings, refine=refine, noise=noise)
            stats.network_passes = velocity.network_passes
            stats.refiner_passes = 0 if refine is None else refine.network_passes
            parts.append(self.decode(z.float(), batch_size) if decode else z.float())
            if bar.total is None and not settings.adaptive:  # every batch makes the same calls as the first
                bar.total = stats.nfe * len(starts)
                bar.refresh()
        bar.close()
        return torch.cat(parts), stats

    def _check_sampler(self, settings: SamplerSettings) -> None:
        """Refuse a sampler this model cannot run: ``fewstep`` on a flow model or beyond the steps it was tuned
        for, ``sde`` from a source that is not noise."""
        if settings.solver == "fewstep" and settings.fixed_step:
            if self.fewstep_nfe is None:
                raise LatentFMError(
                    "solver fewstep runs a model tuned by latentfm train-fewstep; this is a flow model: "
                    "use another solver"
                )
            steps = settings.budget or settings.steps or explicit_steps(settings.schedule)
            if steps > self.fewstep_nfe:
                raise LatentFMError(
                    f"nfe={steps}: this few-step model was tuned for at most {self.fewstep_nfe} steps; give "
                    f"--nfe {self.fewstep_nfe} or fewer, or sample its teacher"
                )
        if settings.solver == "sde" and settings.fixed_step and not self.task.noise_source:
            raise LatentFMError(
                f"solver sde assumes the flow starts from noise; the {self.task.kind} task starts elsewhere: use euler"
            )

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Images in [-1, 1] (NCHW, CPU) of normalised latents."""
        chunks = latents.split(batch_size)
        return torch.cat([self.autoencoder.decode(self.latent_norm.denormalize(z)).float().cpu() for z in chunks])

    def generate(
        self, *args: Any, semantic: torch.Tensor | None = None, **kwargs: Any
    ) -> tuple[torch.Tensor, SampleStats]:
        """Images in [-1, 1] (NCHW, CPU): ``latents(..., decode=True)``, with the same arguments; a semantic
        model follows ``semantic``, class-id maps ``[N, 1, H, W]`` (or ``[N, H, W]``), one per sample."""
        if semantic is not None:
            if semantic.ndim not in (3, 4) or (semantic.ndim == 4 and semantic.shape[1] != 1):
                raise LatentFMError(f"semantic maps of shape {tuple(semantic.shape)}: give [N, H, W] or [N, 1, H, W]")
            maps = semantic.reshape(len(semantic), 1, *semantic.shape[-2:])
            kwargs["inputs"] = {**kwargs.get("inputs", {}), "map": maps}
        return self.latents(*args, **kwargs, decode=True)

    def inpaint(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        n: int = 1,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, SampleStats]:
        """``n`` completions of each image: ``image`` ``[C, H, W]`` or ``[M, C, H, W]`` in [-1, 1], generated
        where ``mask`` (``[H, W]``, ``[1, H, W]`` or ``[M, 1, H, W]``, 1 = generate, 0 = keep) is 1.

        Returns images ``[M * n, C, H, W]`` in [-1, 1] on the CPU (completion ``j`` of image ``i`` at row
        ``i * n + j``), whose known region is the input's exactly, and the stats; ``labels`` (one per output,
        or None for the null label) and the other keywords are those of ``latents``.
        """
        images, masks = self._inpaint_inputs(image, mask)
        if n < 1:
            raise LatentFMError(f"n={n}: ask for at least one completion per image")
        images, masks = images.repeat_interleave(n, 0), masks.repeat_interleave(n, 0)
        inputs = {"image": images, "mask": masks}
        generated, stats = self.generate(labels, n=len(images), inputs=inputs, **kwargs)
        return torch.where(masks.bool(), generated, images), stats

    def upsample(self, low: torch.Tensor | Latents, **kwargs: Any) -> tuple[torch.Tensor, SampleStats]:
        """One output at the model's resolution per low-resolution input, in input order: ``low`` is images
        ``[N, C, H / f, W / f]`` in [-1, 1], or ``Latents`` of another pipeline with the same autoencoder (a
        cascade, never decoded in between; another autoencoder is refused). Returns images in [-1, 1] on the
        CPU (with ``decode=False``, normalised latents) and the stats; other keywords are those of ``latents``."""
        if isinstance(low, Latents):
            inputs = {"low_latent": self.latent_norm.normalize(low.latent_norm.denormalize(self._own_latents(low)))}
        else:
            inputs = {"low": low.float()}
        decode = kwargs.pop("decode", True)
        return self.latents(None, n=len(next(iter(inputs.values()))), inputs=inputs, decode=decode, **kwargs)

    def _own_latents(self, low: Latents) -> torch.Tensor:
        """``low``'s values, refused in one line unless this model's autoencoder made them."""
        mine = self.autoencoder_identity or {}
        difference = first_difference(mine, low.autoencoder, keys=["kind", "weights_sha256"])
        if difference is not None:
            raise LatentFMError(
                f"the latents come from another autoencoder ({difference.key} {str(difference.new)[:12]}, this "
                f"model's is {str(difference.old)[:12]}): up-sample images instead, or latents of its own autoencoder"
            )
        return low.values

    def _inpaint_inputs(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched float images and masks, refused in one line when their sizes or the mask's values are wrong."""
        images = (image[None] if image.ndim == 3 else image).float().cpu()
        masks = mask.float().cpu()
        masks = masks.view(1, 1, *masks.shape) if masks.ndim == 2 else masks[None] if masks.ndim == 3 else masks
        if self.image_shape is not None and tuple(images.shape[1:]) != tuple(self.image_shape):
            raise LatentFMError(
                f"the image is {'x'.join(map(str, images.shape[1:]))} (CxHxW), the model makes "
                f"{'x'.join(map(str, self.image_shape))}: resize it"
            )
        if masks.shape[-2:] != images.shape[-2:] or masks.shape[0] != images.shape[0] or masks.shape[1] != 1:
            raise LatentFMError(f"mask {tuple(masks.shape)} does not fit image {tuple(images.shape)}: one 1xHxW each")
        if not ((masks == 0) | (masks == 1)).all():
            raise LatentFMError("the mask holds values other than 0 and 1: white (1) = generate, black (0) = keep")
        return images, masks

    def model_velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The model's velocity in float32, under bf16 autocast when ``autocast_dtype`` is set."""
        with self._autocast():
            return self.model(x, t, cond).float()

    def refiner_velocity(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor, cond: Condition) -> torch.Tensor:
        """The refiner's correction in float32, under the model's autocast."""
        with self._autocast():
            return self.refiner(x, t, v, cond).float()

    def _autocast(self) -> torch.autocast:
        enabled = self.autocast_dtype is not None
        return torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=enabled)


def _root_autoencoder_files(autoencoder: AutoencoderConfig, directory: Path) -> None:
    """Point the autoencoder's relative weight paths that exist inside ``directory`` (an exported model's
    ``autoencoder/...``) at that directory, wherever the process runs."""
    for name in ("encoder", "decoder", "checkpoint", "path"):
        value = getattr(autoencoder, name)
        if value and not Path(value).is_absolute() and (directory / value).exists():
            setattr(autoencoder, name, str(directory / value))


def recipe_sampler(path: str | Path) -> SamplerSettings:
    """The sampler of a flow checkpoint's recipe (its config's ``sample`` section), read without its weights."""
    return config_from_dict(read_state(resolve_checkpoint(path), GENERATORS).config).sample


def save_upsampled(
    out: Path,
    low: torch.Tensor | Latents,
    images: torch.Tensor,
    stats: SampleStats,
    run: dict[str, Any],
    pipe: FlowPipeline,
) -> None:
    """``OUT/upsampled.npz`` (``images`` uint8 as in ``samples.npz``), ``OUT/upsampled.png`` (rows of up to 16
    inputs, enlarged by nearest neighbours, over their outputs) and ``OUT/stats.json``, each written atomically."""
    if isinstance(low, Latents):
        low = pipe.autoencoder.decode(low.latent_norm.denormalize(low.values.to(pipe.device))).float().cpu()
    enlarged = torch.nn.functional.interpolate(low.float(), size=images.shape[-2:], mode="nearest")
    columns = min(16, len(images))
    blank = torch.full((columns - 1, *images.shape[1:]), -1.0)  # pads the last row of inputs and of outputs

    def row(tiles: torch.Tensor) -> torch.Tensor:
        return torch.cat([tiles, blank])[:columns]

    rows = [
        torch.cat([row(enlarged[i : i + columns]), row(images[i : i + columns])])
        for i in range(0, len(images), columns)
    ]
    save_grid(torch.cat(rows), out / "upsampled.png", columns=columns)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=to_uint8(images), labels=np.full(len(images), -1, dtype=np.int64))
    write_bytes_atomic(out / "upsampled.npz", buffer.getvalue())
    _write_stats(out, stats, run, images=len(images))


def _write_stats(out: Path, stats: SampleStats, run: dict[str, Any], **counts: int) -> None:
    """``OUT/stats.json``: the run's record, the sampler's stats and how many images were written."""
    report = {**run, "solver": stats.solver, "steps": stats.steps, "nfe": stats.nfe, "times": stats.times}
    report.update(
        refiner_calls=stats.refiner_calls,
        network_passes=stats.network_passes,
        refiner_passes=stats.refiner_passes,
        **counts,
    )
    write_bytes_atomic(out / "stats.json", json.dumps(report, indent=1).encode())


def _batch_size(labels: torch.Tensor | None, inputs: Inputs | None) -> int:
    """The number of samples that ``labels`` or ``inputs`` describe."""
    if labels is not None:
        return len(labels)
    if inputs:
        return len(next(iter(inputs.values())))
    raise LatentFMError("give n, the number of samples, when there are neither labels nor inputs")


def save_samples(
    out: Path, images: torch.Tensor, labels: torch.Tensor | None, stats: SampleStats, run: dict[str, Any], columns: int
) -> None:
    """``OUT/samples.png`` (``columns`` per row), ``OUT/samples.npz`` (uint8 images, labels) and ``OUT/stats.json``
    (``run``: checkpoint, seed, guidance, ... and the sampler's stats), each written atomically."""
    write_samples(out, images, labels, columns=min(columns, len(images)))
    _write_stats(out, stats, run, samples=len(images))


def save_inpainted(
    out: Path,
    images: torch.Tensor,
    masks: torch.Tensor,
    completions: torch.Tensor,
    stats: SampleStats,
    run: dict[str, Any],
) -> None:
    """``OUT/inpainted.npz`` (``images``: the uint8 completions, N×H×W or N×H×W×C, ``n`` per input in input
    order), ``OUT/inpainted.png`` (a row per input: the image, its mask, its completions) and ``OUT/stats.json``,
    each written atomically. ``images`` [M, C, H, W] and ``masks`` [M, 1, H, W] are the inputs."""
    per_input = len(completions) // len(images)
    mask_tiles = (masks * 2 - 1).expand(-1, images.shape[1], -1, -1)
    groups = completions.view(len(images), per_input, *images.shape[1:])
    rows = [torch.cat([image[None], mask[None], group]) for image, mask, group in zip(images, mask_tiles, groups)]
    save_grid(torch.cat(rows), out / "inpainted.png", columns=per_input + 2)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=to_uint8(completions))
    write_bytes_atomic(out / "inpainted.npz", buffer.getvalue())
    _write_stats(out, stats, run, completions=len(completions))
