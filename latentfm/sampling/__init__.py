"""Sampling: ODE solvers on time grids, schedules and their search, classifier-free guidance, one entry
point ``sample``."""

from latentfm.sampling.guidance import GuidedVelocity
from latentfm.sampling.program import SearchedSchedule, load_schedule, schedule_from_text
from latentfm.sampling.sample import ADAPTIVE_SOLVERS, SampleStats, sample
from latentfm.sampling.schedules import time_grid
from latentfm.sampling.search import search_schedule
from latentfm.sampling.solvers import FIXED_SOLVERS, integrate, rules_nfe

__all__ = [
    "ADAPTIVE_SOLVERS",
    "FIXED_SOLVERS",
    "GuidedVelocity",
    "SampleStats",
    "SearchedSchedule",
    "integrate",
    "load_schedule",
    "rules_nfe",
    "sample",
    "schedule_from_text",
    "search_schedule",
    "time_grid",
]
