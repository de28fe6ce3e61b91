"""Sampling: ODE solvers on time grids, schedules and their search, classifier-free guidance, one entry
point ``sample``."""

from latentfm.sampling.guidance import GuidedRefiner, GuidedVelocity
from latentfm.sampling.program import SearchedSchedule, load_schedule, schedule_from_text
from latentfm.sampling.sample import SampleStats, sample
from latentfm.sampling.schedules import time_grid
from latentfm.sampling.search import search_schedule
from latentfm.sampling.settings import (
    ADAPTIVE_SOLVERS,
    DEFAULT_NFE,
    DEFAULT_SOLVER,
    SamplerSettings,
    command_line_fields,
    interval_from_text,
    interval_text,
    value_of,
)
from latentfm.sampling.solvers import FIXED_SOLVERS, heun_sampler, integrate, rules_nfe

__all__ = [
    "ADAPTIVE_SOLVERS",
    "DEFAULT_NFE",
    "DEFAULT_SOLVER",
    "FIXED_SOLVERS",
    "GuidedRefiner",
    "GuidedVelocity",
    "SampleStats",
    "SamplerSettings",
    "SearchedSchedule",
    "command_line_fields",
    "heun_sampler",
    "integrate",
    "interval_from_text",
    "interval_text",
    "load_schedule",
    "rules_nfe",
    "sample",
    "schedule_from_text",
    "search_schedule",
    "time_grid",
    "value_of",
]
