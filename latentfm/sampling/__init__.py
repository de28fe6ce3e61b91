"""Sampling: ODE solvers on time grids, classifier-free guidance, one entry point ``sample``."""

from latentfm.sampling.guidance import GuidedVelocity
from latentfm.sampling.sample import SampleStats, sample
from latentfm.sampling.schedules import time_grid
from latentfm.sampling.solvers import SOLVERS, euler_step, heun_step

__all__ = ["SOLVERS", "GuidedVelocity", "SampleStats", "euler_step", "heun_step", "sample", "time_grid"]
