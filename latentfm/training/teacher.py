"""The run config of a network trained against a trained flow model, its teacher (``train-refiner``,
``train-fewstep``): the teacher's data and model, the file's own training sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from latentfm.checkpoint import read_state, resolve_checkpoint
from latentfm.config import Config, config_from_dict
from latentfm.errors import LatentFMError


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
