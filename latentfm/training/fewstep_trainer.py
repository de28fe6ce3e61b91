"""Few-step tuning of a trained flow model (``latentfm train-fewstep``): the teacher's EMA weights start a network
that learns to cross the path in 1-4 calls, sampled with ``--solver fewstep``.

Two objectives (``fewstep.objective``), both without a Jacobian-vector product or a second network; at equal
CPU time on the Fashion-MNIST recipe ``shortcut`` was far better at 1 and 2 steps (BENCHMARKS.md), so it is the
default:

- ``consistency``, Easy Consistency Tuning (Geng et al. 2024) in velocity form. The consistency function is the
  denoised estimate ``f(x, t) = x + (1 - t) v(x, t)`` (the data at t = 1 in our time). A point ``x_t`` and a
  point ``x_r`` of the same noise and data with ``r = t + g (1 - t)`` closer to the data; ``f(x_t, t)`` learns
  ``f(x_r, r)`` of the same network under no_grad. Divided by ``1 - t`` this is a velocity regression onto
  ``g u + (1 - g) v(x_r, r)`` (``u`` the path's velocity): flow matching at ``g = 1``, self-consistency as
  ``g`` falls, geometrically from ``gap_start`` to ``gap_end`` over the run.
- ``shortcut``, shortcut models (Frans et al. 2024): the network gets the jump ``d`` as an input
  (``Condition.step``, a zero-initialised embedding). On a share of the batch a jump ``d = 2^-k`` from a time on
  its grid learns the mean of two half jumps of the same network under no_grad (half jumps below
  ``shortcut_min_step`` are the velocity itself); the rest is flow matching with ``d = 0``.

Labels are dropped by the trainer with the model's ``class_dropout``, the same rows for the network and its
target, so the tuned model keeps its unconditional half and is guided at sampling like its teacher. Data, resume,
EMA, torchrun and checkpoints are the flow trainer's; the checkpoint (kind ``fewstep``) records the hash of the
teacher's EMA weights it started from.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from latentfm.condition import Condition
from latentfm.config import Config
from latentfm.errors import LatentFMError
from latentfm.flow import flow_matching_loss
from latentfm.models.build import build_model
from latentfm.pipeline import FlowPipeline
from latentfm.seeding import generator
from latentfm.training.loop import FEWSTEP
from latentfm.training.teacher import TeacherTrainer, teacher_config

OBJECTIVES = ("consistency", "shortcut")


def fewstep_config(teacher: str | Path, path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The run config of a few-step tuning: the teacher's data, autoencoder, task, model and flow, the file's
    ``fewstep``, ``optim``, ``train``, ``sample`` and ``eval`` sections, then ``key=value`` overrides; a
    ``shortcut`` objective gives the model its step input (``model.step_input``)."""
    config = teacher_config(teacher, path, overrides, "fewstep")
    fewstep = config.fewstep
    if fewstep.objective not in OBJECTIVES:
        raise LatentFMError(f"config key fewstep.objective={fewstep.objective!r}: use one of {', '.join(OBJECTIVES)}")
    if fewstep.gap_end > fewstep.gap_start:
        raise LatentFMError(
            f"config key fewstep.gap_end={fewstep.gap_end} exceeds fewstep.gap_start={fewstep.gap_start}: the gap "
            "falls over the run"
        )
    config.model.step_input = fewstep.objective == "shortcut"
    return config


class FewStepTrainer(TeacherTrainer):
    """Tunes the teacher at ``config.fewstep.teacher`` for few-step sampling (``config.fewstep.objective``)."""

    section = "fewstep"
    checkpoint_kind = "fewstep"

    def build_network(self) -> torch.nn.Module:
        """The teacher's network with its EMA weights (and, for ``shortcut``, a step input that starts at zero);
        labels are dropped by ``train_step``, not inside the network."""
        self.check_teacher_data()
        inputs = self.task.model_inputs(self.latent_shape, tuple(self.latents.image_shape))
        model = replace(self.config.model, class_dropout=0.0)
        network = build_model(model, self.latent_shape[0], self.latent_shape[1], self.num_classes, **inputs)
        missing, unexpected = network.load_state_dict(self.teacher.model.state_dict(), strict=False)
        if unexpected or any(not key.startswith("step_embedder.") for key in missing):
            raise LatentFMError(f"the teacher's weights do not fit its own model config ({(missing + unexpected)[0]})")
        return network

    def gap(self) -> float:
        """The consistency gap ``g`` of this step: geometric from ``gap_start`` to ``gap_end`` over the run."""
        fewstep, progress = self.config.fewstep, self.step / max(1, self.config.train.steps - 1)
        return fewstep.gap_start * math.exp(progress * math.log(fewstep.gap_end / fewstep.gap_start))

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step of the few-step objective; returns the detached loss."""
        cond, flow = self.path_batch()
        size, part = self.config.train.batch_size, self.rank_slice()
        draws = generator(self.device, self.config.train.seed, FEWSTEP, self.step)
        draws = torch.rand(size, 3, generator=draws, device=self.device)[part]
        cond = cond.with_null_labels(draws[:, 0] < self.config.model.class_dropout, self.num_classes)
        if self.config.fewstep.objective == "consistency":
            x, t, target = self._consistency_pairs(cond, flow.x_t, flow.t, flow.u_t)
        else:
            x, t, target, cond = self._shortcut_pairs(cond, flow.x_t, flow.t, flow.u_t, draws[:, 1:])
        with self.autocast():
            predicted = self.train_model(x, t, cond).float()
        return self.finish_step(flow_matching_loss(predicted, target))

    @torch.no_grad()
    def _velocity(self, x: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        with self.autocast():
            return self.model(x, t, cond).float()

    def _consistency_pairs(self, cond: Condition, x_t: torch.Tensor, t: torch.Tensor, u: torch.Tensor):
        """``x_t``, ``t`` and the velocity target ``g u + (1 - g) v(x_r, r)``, ``r = t + g (1 - t)``."""
        gap = self.gap()
        r = t + gap * (1 - t)
        x_r = x_t + _column(r - t, x_t) * u
        target = gap * u + (1 - gap) * self._velocity(x_r, r, cond)
        return x_t, t, target

    def _shortcut_pairs(self, cond: Condition, x_t: torch.Tensor, t: torch.Tensor, u: torch.Tensor, draws):
        """Rows drawn for a jump (``draws[:, 0] < shortcut_fraction``) move to a time on their jump's grid and
        learn the mean of two half jumps; the others keep flow matching with jump 0. Returns the inputs, times,
        targets and the condition with each row's jump."""
        fewstep = self.config.fewstep
        levels = round(math.log2(1 / fewstep.shortcut_min_step)) + 1  # jumps 1, 1/2, ..., shortcut_min_step
        jumps = 2.0 ** -torch.floor(draws[:, 1] * levels).clamp(max=levels - 1)
        jumping = draws[:, 0] < fewstep.shortcut_fraction
        start = torch.floor(t / jumps).clamp(max=1 / jumps - 1) * jumps
        x, times, target = x_t.clone(), t.clone(), u.clone()
        rows = jumping.nonzero().squeeze(1)
        x[rows] = x_t[rows] + _column(start[rows] - t[rows], x_t) * u[rows]
        times[rows] = start[rows]
        if not len(rows):
            return x, times, target, cond.with_step(torch.zeros_like(t))
        half = jumps[rows] / 2
        jumped = cond.rows(rows).with_step(torch.where(half >= fewstep.shortcut_min_step, half, torch.zeros_like(half)))
        v1 = self._velocity(x[rows], times[rows], jumped)
        v2 = self._velocity(x[rows] + _column(half, x_t) * v1, times[rows] + half, jumped)
        target[rows] = (v1 + v2) / 2
        return x, times, target, cond.with_step(torch.where(jumping, jumps, torch.zeros_like(jumps)))

    def pipeline(self) -> FlowPipeline:
        """The EMA network as a few-step pipeline, sampling with the ``sample`` section."""
        return replace(super().pipeline(), fewstep_nfe=self.config.fewstep.max_nfe)


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` ``[B]`` shaped to broadcast over ``like`` ``[B, ...]``."""
    return values.view(-1, *[1] * (like.ndim - 1))
