"""Flow-matching core: paths, time samplers and the loss."""

from latentfm.flow.loss import flow_matching_loss
from latentfm.flow.paths import AffinePath, CosinePath, LinearPath, build_path
from latentfm.flow.time_samplers import (
    TimeSampler,
    build_time_sampler,
    logit_normal_sampler,
    mode_sampler,
    uniform_sampler,
)

__all__ = [
    "AffinePath",
    "CosinePath",
    "LinearPath",
    "TimeSampler",
    "build_path",
    "build_time_sampler",
    "flow_matching_loss",
    "logit_normal_sampler",
    "mode_sampler",
    "uniform_sampler",
]
