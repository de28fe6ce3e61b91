"""Time grids from t=0 (source) to t=1 (data), in float64."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentfm.errors import LatentFMError

Schedule = str | Sequence[float]


def time_grid(schedule: Schedule, steps: int) -> torch.Tensor:
    """The ``steps + 1`` increasing times of ``schedule`` from 0 to 1 as a float64 tensor.

    ``schedule`` is ``"uniform"`` or an explicit increasing list of times from 0 to 1 (then ``steps``
    must equal its number of intervals).
    """
    if isinstance(schedule, str):
        if schedule != "uniform":
            raise LatentFMError(f"schedule={schedule!r} is unknown; use 'uniform' or an explicit list of times")
        return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    times = torch.as_tensor(list(schedule), dtype=torch.float64)
    _check_explicit(times)
    if len(times) - 1 != steps:
        raise LatentFMError(f"the explicit schedule has {len(times) - 1} steps but {steps} were asked for")
    return times


def _check_explicit(times: torch.Tensor) -> None:
    if times.dim() != 1 or len(times) < 2:
        raise LatentFMError("an explicit schedule needs at least two times, from 0 to 1")
    if times[0] != 0.0 or times[-1] != 1.0:
        raise LatentFMError(f"an explicit schedule must start at 0 and end at 1, got {times[0]:g} .. {times[-1]:g}")
    if not bool((times[1:] > times[:-1]).all()):
        raise LatentFMError("an explicit schedule must be strictly increasing")


def explicit_steps(schedule: Schedule) -> int | None:
    """The number of steps an explicit schedule fixes, or None for a named schedule."""
    return None if isinstance(schedule, str) else len(list(schedule)) - 1
