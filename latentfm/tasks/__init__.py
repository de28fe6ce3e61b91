"""Tasks: what a condition is and how to build it, for training batches and at sampling time.

The trainer, the pipeline and the command line ask the task of the config's ``task`` section (absent: ``class``)
and never branch on which task it is. Tasks hold no weights: a learnable condition encoder is part of the model.
"""

from __future__ import annotations

from latentfm.config import TaskConfig
from latentfm.data.masks import MaskSettings
from latentfm.errors import LatentFMError
from latentfm.tasks.base import Encode, Inputs, Task, TrainingBatch
from latentfm.tasks.classes import ClassTask
from latentfm.tasks.inpaint import InpaintTask
from latentfm.tasks.semantic import SemanticTask, intensity_maps
from latentfm.tasks.upsample import UpsampleTask

TASKS = ("class", "inpaint", "semantic", "upsample")


def build_task(config: TaskConfig | None = None) -> Task:
    """The task a config's ``task`` section describes (None: ``class``).

    Example:
        >>> build_task(TaskConfig(kind="inpaint")).kind
        'inpaint'
    """
    config = config or TaskConfig()
    if config.kind == "class":
        return ClassTask()
    if config.kind == "inpaint":
        masks = MaskSettings(
            kinds=tuple(config.mask_kinds),
            min_fraction=config.mask_min_fraction,
            max_fraction=config.mask_max_fraction,
            everything_probability=config.mask_everything_probability,
        )
        return InpaintTask(masks)
    if config.kind == "semantic":
        return SemanticTask(
            config.map_source, config.map_bands, config.map_classes, config.map_channels, config.map_dropout
        )
    if config.kind == "upsample":
        return UpsampleTask(
            config.upsample_factor,
            config.upsample_mode,
            config.upsample_low_source,
            config.upsample_noise,
            config.upsample_diffusion_step,
            config.upsample_sigma,
            config.upsample_labels,
        )
    raise LatentFMError(f"task.kind={config.kind!r} is unknown; use one of {', '.join(TASKS)}")


__all__ = [
    "TASKS",
    "ClassTask",
    "Encode",
    "InpaintTask",
    "Inputs",
    "SemanticTask",
    "Task",
    "TrainingBatch",
    "UpsampleTask",
    "build_task",
    "intensity_maps",
]
