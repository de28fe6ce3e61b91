"""Flow-matching core: paths, time samplers, couplings, the one-call objective and the loss, and the conversions
between a velocity and the denoised estimate, the noise estimate and the score."""

from latentfm.flow.conversions import (
    denoised_from_velocity,
    noise_from_velocity,
    score_from_velocity,
    velocity_from_denoised,
    velocity_from_noise,
    velocity_from_score,
)
from latentfm.flow.couplings import Coupling, build_coupling, minibatch_ot_pairing
from latentfm.flow.loss import flow_matching_loss
from latentfm.flow.objective import FlowObjective, FlowSample
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
    "Coupling",
    "CosinePath",
    "FlowObjective",
    "FlowSample",
    "LinearPath",
    "TimeSampler",
    "build_coupling",
    "build_path",
    "build_time_sampler",
    "denoised_from_velocity",
    "flow_matching_loss",
    "logit_normal_sampler",
    "minibatch_ot_pairing",
    "mode_sampler",
    "noise_from_velocity",
    "score_from_velocity",
    "uniform_sampler",
    "velocity_from_denoised",
    "velocity_from_noise",
    "velocity_from_score",
]
