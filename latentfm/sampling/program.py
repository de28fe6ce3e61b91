"""A searched sampling program: a time grid with one update rule per step (and ``lms`` weights), as written
by ``search_schedule`` and read back by ``load_schedule``. A plain data type: no search code here."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from latentfm.atomic import write_bytes_atomic
from latentfm.errors import LatentFMError
from latentfm.sampling.schedules import check_times
from latentfm.sampling.solvers import HISTORY, RULES, Velocity, integrate, rules_nfe

FORMAT = "latentfm-schedule/1"
LMS_HISTORY = HISTORY  # states and velocities an lms step combines


@dataclass
class SearchedSchedule:
    """A whole sampling recipe: ``times`` (``len(rules) + 1`` values from 0 to 1) and one rule per step."""

    times: list[float]
    rules: list[str]
    nfe: int
    coefficients: list[list[float]] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_times(torch.tensor(self.times, dtype=torch.float64))
        if len(self.times) != len(self.rules) + 1 or not set(self.rules) <= set(RULES):
            raise LatentFMError(f"a searched schedule needs one known rule ({', '.join(RULES)}) per step")
        if rules_nfe(self.rules) != self.nfe:
            raise LatentFMError(f"the schedule's rules spend {rules_nfe(self.rules)} NFE, not the {self.nfe} it claims")
        if "lms" in self.rules and (self.coefficients is None or len(self.coefficients) != len(self.rules)):
            raise LatentFMError("a schedule with lms steps needs one list of coefficients per step")
        for rule, row in zip(self.rules, self.coefficients or []):
            if rule == "lms" and (not row or len(row) % 2 or len(row) > 2 * LMS_HISTORY):
                raise LatentFMError(f"an lms step needs 2 to {2 * LMS_HISTORY} coefficients (states, velocities)")

    def run(self, velocity: Velocity, x0: torch.Tensor) -> torch.Tensor:
        """Integrate ``velocity`` from ``x0`` with this recipe."""
        return integrate(velocity, x0, self.times, self.rules, self.coefficients)

    def save(self, path: str | Path) -> None:
        """Write the schedule as JSON (atomically)."""
        write_bytes_atomic(path, json.dumps({"format": FORMAT, **asdict(self)}, indent=1).encode())


def load_schedule(path: str | Path) -> SearchedSchedule:
    """A schedule written by ``SearchedSchedule.save``."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise LatentFMError(f"cannot read schedule {path}: {error}") from None
    if not isinstance(values, dict) or values.pop("format", None) != FORMAT:
        raise LatentFMError(f"{path} is not a latentfm schedule ({FORMAT})")
    try:
        return SearchedSchedule(**values)
    except (TypeError, ValueError) as error:
        raise LatentFMError(f"schedule {path} is malformed: {error}") from None


def schedule_from_text(text: str) -> str | list[float] | SearchedSchedule:
    """A schedule as the command line gives it: a name (``shift:3``), a comma-separated list of times, or a
    ``search-schedule`` JSON file."""
    if text.endswith(".json"):
        return load_schedule(text)
    if "," not in text:
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise LatentFMError("a list of times looks like 0,0.3,0.7,1") from None
