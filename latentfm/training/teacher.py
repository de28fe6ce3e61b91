"""A network trained against a trained flow model, its teacher (``train-refiner``, ``train-fewstep``): the run
config (the teacher's data and model, the file's own training sections) and the trainer's teacher handling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from latentfm.autoencoders import LatentNorm
from latentfm.checkpoint import read_state, resolve_checkpoint, weights_sha256
from latentfm.config import Config, config_from_dict
from latentfm.errors import LatentFMError
from latentfm.pipeline import FlowPipeline
from latentfm.training.trainer import Trainer


def teacher_config(
    teacher: str | Path,
    path: str | Path | None,
    overrides: list[str] | tuple[str, ...],
    section: str,
) -> Config:
    """The teacher's data, autoencoder, task, model and flow; the file's ``section`` (``refiner`` or ``fewstep``,
    whose ``teacher`` is set to ``teacher``), ``optim``, ``train``, ``sample`` and ``eval`` sections, and any
    ``data`` keys it gives (a moved latent cache); then ``key=value`` overrides. Another section in the file is
    refused in one line: it is the teacher's."""
    own = (section, "optim", "train", "sample", "eval")
    values = {k: v for k, v in read_state(resolve_checkpoint(teacher), "flow").config.items() if k not in own}
    given: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise LatentFMError(f"config file {path} does not exist")
        try:
            given = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            raise LatentFMError(f"config file {path} is not valid YAML: {error}") from None
    unknown = sorted(set(given) - {*own, "data"})
    if unknown:
        raise LatentFMError(
            f"{section} config {path}: section {unknown[0]} is the teacher's; give {', '.join(own)} (and data paths)"
        )
    values = {**values, **{k: v for k, v in given.items() if k != "data"}}
    values["data"] = {**values.get("data", {}), **given.get("data", {})}
    values.setdefault(section, {})["teacher"] = str(teacher)
    return config_from_dict(values, overrides)


class TeacherTrainer(Trainer):
    """The flow trainer for a network trained against the teacher named in ``config.<section>.teacher``: it loads
    the teacher, lives in its latent space, refuses to resume a run made for other teacher weights, and records
    the teacher's EMA weights hash in every checkpoint. Subclasses set ``section`` and ``checkpoint_kind``."""

    section: str

    def __init__(self, config: Config):
        self.teacher_path = getattr(config, self.section).teacher
        if not self.teacher_path:
            raise LatentFMError(f"{self.section}.teacher is not set: give --teacher RUN")
        self.teacher = FlowPipeline.from_checkpoint(self.teacher_path)
        self.teacher_hash = weights_sha256(self.teacher.model)
        super().__init__(config)

    def initial_latent_norm(self, resumed: Path | None) -> LatentNorm:
        """The teacher's; a resumed run must have been made for the same teacher weights."""
        if resumed:
            teacher = read_state(resumed, self.checkpoint_kind).teacher or {}
            if teacher.get("weights_sha256") != self.teacher_hash:
                raise LatentFMError(
                    f"{self.run_dir.path} was trained against other teacher weights ({teacher.get('checkpoint')}); "
                    "choose a new train.out_dir"
                )
        return self.teacher.latent_norm

    def check_teacher_data(self) -> None:
        """Refuse data whose latents or classes are not the teacher's."""
        if self.latent_shape != self.teacher.latent_shape or self.num_classes != self.teacher.num_classes:
            raise LatentFMError(
                f"the data gives latents {list(self.latent_shape)} and {self.num_classes} classes, the teacher "
                f"{list(self.teacher.latent_shape)} and {self.teacher.num_classes}: train on the teacher's data"
            )

    def checkpoint_state(self) -> dict[str, Any]:
        """The flow trainer's state and the teacher's weights hash and checkpoint."""
        teacher = {"weights_sha256": self.teacher_hash, "checkpoint": str(resolve_checkpoint(self.teacher_path))}
        return {**super().checkpoint_state(), "teacher": teacher}
