"""Time grids from t=0 (source) to t=1 (data), in float64.

Named schedules (``steps`` intervals each):

- ``uniform``: equal steps.
- ``shift:S`` (SD3): the uniform grid in noise level ``s = 1 - t`` mapped by ``s -> S s / (1 + (S - 1) s)``;
  ``S > 1`` spends more steps near the source, ``S < 1`` near the data. ``shift`` alone means ``S = 3``.
- ``edm:RHO`` (Karras et al.): EDM's noise levels ``sigma`` from 80 to 0.002 spaced uniformly in
  ``sigma ** (1 / RHO)``, mapped to flow time by ``t = 1 / (1 + sigma)`` (the linear path's
  ``sigma = (1 - t) / t``), with the end points replaced by exactly 0 and 1. ``edm`` alone means ``RHO = 7``.
- ``cosine``: ``t = (1 - cos(pi u)) / 2`` for uniform ``u``: dense at both ends.

An explicit increasing list of times from 0 to 1 is also a schedule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from latentfm.errors import LatentFMError

Schedule = str | Sequence[float]
NAMED = ("uniform", "shift", "edm", "cosine")
EDM_SIGMA_MAX, EDM_SIGMA_MIN = 80.0, 0.002


def _parse(name: str) -> tuple[str, float | None]:
    kind, _, value = name.partition(":")
    if kind not in NAMED:
        raise LatentFMError(f"schedule={name!r} is unknown; use {', '.join(NAMED)} (e.g. shift:3, edm:7) or a list")
    if not value:
        return kind, None
    try:
        return kind, float(value)
    except ValueError:
        raise LatentFMError(f"schedule={name!r}: {value!r} is not a number") from None


def named_grid(name: str, steps: int) -> torch.Tensor:
    """The ``steps + 1`` times of a named schedule (see the module docstring); refused in one line when its value
    gives no strictly increasing grid (``shift:1e300``).

    Example:
        >>> named_grid("shift:2", 2).tolist()
        [0.0, 0.33333333333333337, 1.0]
    """
    try:
        times = _named_times(name, steps)
    except (OverflowError, ZeroDivisionError):
        times = torch.full((steps + 1,), math.nan, dtype=torch.float64)
    times[0], times[-1] = 0.0, 1.0  # exactly, whatever the rounding of the formula (shift:1/3 gave -2e-16)
    if not bool(torch.isfinite(times).all()) or not bool((times[1:] > times[:-1]).all()):
        raise LatentFMError(f"schedule={name!r} gives no increasing grid of {steps} steps: choose another value")
    return times


def _named_times(name: str, steps: int) -> torch.Tensor:
    kind, value = _parse(name)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        return u
    if kind == "cosine":
        return (1.0 - torch.cos(math.pi * u)) / 2.0
    if kind == "shift":
        shift = 3.0 if value is None else value
        if not math.isfinite(shift) or shift <= 0:
            raise LatentFMError(f"schedule={name!r}: the shift must be positive")
        s = 1.0 - u
        return 1.0 - shift * s / (1.0 + (shift - 1.0) * s)
    rho = 7.0 if value is None else value
    if not math.isfinite(rho) or rho <= 0:
        raise LatentFMError(f"schedule={name!r}: rho must be positive")
    lo, hi = EDM_SIGMA_MIN ** (1 / rho), EDM_SIGMA_MAX ** (1 / rho)
    sigma = (hi + u * (lo - hi)) ** rho
    times = 1.0 / (1.0 + sigma)
    times[0], times[-1] = 0.0, 1.0
    return times


def time_grid(schedule: Schedule, steps: int) -> torch.Tensor:
    """The ``steps + 1`` increasing times of ``schedule`` from 0 to 1 as a float64 tensor.

    ``schedule`` is a name (see the module docstring) or an explicit increasing list of times from 0 to 1
    (then ``steps`` must equal its number of intervals).
    """
    if isinstance(schedule, str):
        return named_grid(schedule, steps)
    times = torch.as_tensor(list(schedule), dtype=torch.float64)
    check_times(times)
    if len(times) - 1 != steps:
        raise LatentFMError(f"the explicit schedule has {len(times) - 1} steps but {steps} were asked for")
    return times


def check_times(times: torch.Tensor) -> None:
    """Refuse a grid that does not increase strictly from exactly 0 to exactly 1."""
    if times.dim() != 1 or len(times) < 2:
        raise LatentFMError("an explicit schedule needs at least two times, from 0 to 1")
    if times[0] != 0.0 or times[-1] != 1.0:
        raise LatentFMError(f"an explicit schedule must start at 0 and end at 1, got {times[0]:g} .. {times[-1]:g}")
    if not bool((times[1:] > times[:-1]).all()):
        raise LatentFMError("an explicit schedule must be strictly increasing")


def explicit_steps(schedule: Schedule) -> int | None:
    """The number of steps an explicit schedule fixes, or None for a named schedule."""
    return None if isinstance(schedule, str) else len(list(schedule)) - 1
