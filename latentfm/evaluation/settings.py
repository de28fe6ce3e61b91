"""What determines an evaluation's numbers (EVALUATION.md); all of it is written into the report."""

from __future__ import annotations

from dataclasses import dataclass, replace

from latentfm.errors import LatentFMError
from latentfm.sampling import SamplerSettings, SearchedSchedule, interval_from_text, interval_text, schedule_from_text
from latentfm.sampling.schedules import Schedule
from latentfm.sampling.settings import GIVEN_FIELDS

KEEP_FEATURES = 10_000  # features kept per set for KID and precision/recall: a seeded random subset
SPEED_SETTINGS = ("batch_size", "latency_batch", "latency_repeats")  # may change when an evaluation resumes


@dataclass
class EvalSettings:
    """Everything that determines an evaluation's numbers (all of it is written into the report)."""

    checkpoint: str
    reference: str
    features: str
    classifier: str | None = None  # for class accuracy when ``features`` is InceptionV3
    n: int = 50_000
    seed: int = 0
    solver: str | None = None  # None: the checkpoint's sample section (see ``filled_from``)
    nfe: int | None = None
    steps: int | None = None
    schedule: str | None = None  # a name, a list "0,0.5,1" or a search-schedule JSON file
    cfg: float | None = None
    guidance_interval: str | None = None  # "LOW,HIGH" or "all"
    turbo: str | None = None  # a FlowTurbo program H{n}P{m}R{k} instead of solver and budget
    refiner: str | None = None  # the velocity refiner's run or checkpoint (turbo programs with refiner steps)
    compile: str | None = None  # a torch.compile mode for the sampling steps
    batch_size: int = 256
    shard_size: int = 1000
    keep_features: int = KEEP_FEATURES
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    latency_batch: int = 64
    latency_repeats: int = 5

    def filled_from(self, recipe: SamplerSettings) -> EvalSettings:
        """These settings with the sampler fields left open taken from ``recipe`` (a checkpoint's sampler), so
        that the report states the whole sampler."""
        sampler = recipe.with_given(**{name: getattr(self, name) for name in GIVEN_FIELDS})
        return replace(
            self,
            solver=sampler.solver,
            nfe=sampler.budget if sampler.fixed_step else None,
            steps=sampler.steps,
            schedule=self.schedule or _schedule_text(sampler.schedule),
            cfg=sampler.cfg,
            guidance_interval=interval_text(sampler.guidance_interval),
            turbo=sampler.turbo,
            compile=sampler.compile,
        )

    def sampler(self) -> SamplerSettings:
        """The sampler of these (filled) settings."""
        schedule = schedule_from_text(self.schedule or "uniform")
        interval = interval_from_text(self.guidance_interval or "all")
        if self.turbo is not None:
            return SamplerSettings(
                schedule=schedule, cfg=self.cfg, guidance_interval=interval, turbo=self.turbo, compile=self.compile
            )
        return SamplerSettings(
            self.solver, self.nfe, self.steps, schedule, self.cfg, guidance_interval=interval, compile=self.compile
        )


def _schedule_text(schedule: Schedule | SearchedSchedule) -> str:
    """A schedule as ``--schedule`` writes it."""
    if isinstance(schedule, str):
        return schedule
    if isinstance(schedule, SearchedSchedule):
        raise LatentFMError("the checkpoint's sample section names a searched schedule: give --schedule FILE")
    return ",".join(str(float(t)) for t in schedule)
