"""Training FlowTurbo's velocity refiner against a frozen flow model (``latentfm train-refiner``).

A point ``x_t`` of the teacher's own training path (its data, task, coupling and time sampler), a small step
``Δ ~ U(0, refiner.delta_max)`` per sample, ``x' = x_t + Δ v(x_t, t)``; the refiner learns the teacher's
``v(x', t + Δ)`` as ``v + refiner(x', t + Δ | v)`` (t + Δ kept in [0, 1]). A label dropped for a sample is
dropped for the input velocity, the target and the refiner alike. Data, resume, EMA, torchrun and checkpoints
are the flow trainer's; the checkpoint (kind ``refiner``) records the hash of the teacher's EMA weights.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from latentfm.config import Config
from latentfm.flow import flow_matching_loss
from latentfm.models.refiner import build_refiner
from latentfm.pipeline import FlowPipeline
from latentfm.seeding import generator
from latentfm.training.loop import REFINE
from latentfm.training.teacher import TeacherTrainer, teacher_config


def refiner_config(teacher: str | Path, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run config of a refiner: the teacher's data, autoencoder, task, model and flow, the refiner file's
    ``refiner``, ``optim``, ``train``, ``sample`` and ``eval`` sections (and any ``data`` keys it gives, e.g. a
    moved latent cache), then ``key=value`` overrides."""
    return teacher_config(teacher, path, overrides, "refiner")


class RefinerTrainer(TeacherTrainer):
    """Trains a velocity refiner (``config.refiner``) for the teacher at ``config.refiner.teacher``."""

    section = "refiner"
    checkpoint_kind = "refiner"

    def __init__(self, config: Config):
        super().__init__(config)
        self.teacher.model.to(self.device)
        self.teacher.autocast_dtype = self.autocast_dtype

    def build_network(self) -> torch.nn.Module:
        """The refiner, checked to fit the teacher's latents and classes."""
        self.check_teacher_data()
        inputs = self.task.model_inputs(self.latent_shape, tuple(self.latents.image_shape))
        return build_refiner(self.config.refiner, self.config.model, self.latent_shape, self.num_classes, **inputs)

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step of the refiner on the teacher's velocities; returns the detached loss."""
        cond, flow = self.path_batch()
        size, part = self.config.train.batch_size, self.rank_slice()
        draws = generator(self.device, self.config.train.seed, REFINE, self.step)
        draws = torch.rand(size, 2, generator=draws, device=self.device)[part]
        delta, drop = draws[:, 0] * self.config.refiner.delta_max, draws[:, 1] < self.config.refiner.label_dropout
        cond = cond.with_null_labels(drop, self.num_classes)
        t_next = (flow.t + delta).clamp(max=1.0)
        with torch.no_grad():
            v = self.teacher.model_velocity(flow.x_t, flow.t, cond)
            x_next = flow.x_t + (t_next - flow.t).view(-1, *[1] * (v.ndim - 1)) * v
            target = self.teacher.model_velocity(x_next, t_next, cond)
        with self.autocast():
            predicted = v + self.train_model(x_next, t_next, v, cond).float()
        return self.finish_step(flow_matching_loss(predicted, target))

    def pipeline(self) -> FlowPipeline:
        """The teacher with the EMA refiner, sampling with the ``sample`` section (its turbo program)."""
        return replace(self.teacher, refiner=self.ema.model, sampler=self.sampler)
