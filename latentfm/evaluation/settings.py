"""What determines an evaluation's numbers (EVALUATION.md); all of it is written into the report."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from latentfm.sampling import SamplerSettings

KEEP_FEATURES = 10_000  # features kept per set for KID and precision/recall: a seeded random subset
SPEED_SETTINGS = ("batch_size", "latency_batch", "latency_repeats")  # may change when an evaluation resumes


@dataclass
class EvalSettings:
    """Everything that determines an evaluation's numbers (all of it is written into the report).

    ``sampler`` None samples with the checkpoint's recipe; ``refiner`` is the velocity refiner's run or checkpoint
    (turbo programs with refiner steps).
    """

    checkpoint: str
    reference: str
    features: str
    sampler: SamplerSettings | None = None
    classifier: str | None = None  # for class accuracy when ``features`` is InceptionV3
    refiner: str | None = None
    n: int = 50_000
    seed: int = 0
    batch_size: int = 256
    shard_size: int = 1000
    keep_features: int = KEEP_FEATURES
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    latency_batch: int = 64
    latency_repeats: int = 5

    def to_values(self) -> dict[str, Any]:
        """Plain values for ``report.json`` and ``run.json``: the sampler as ``SamplerSettings.to_values`` writes it.

        Example:
            >>> settings = EvalSettings("runs/r", "ref.npz", "clf.safetensors", SamplerSettings(nfe=4))
            >>> settings.to_values()["sampler"]["nfe"]
            4
        """
        values = {item.name: getattr(self, item.name) for item in fields(self)}
        return {**values, "sampler": None if self.sampler is None else self.sampler.to_values()}


def report_sampler(settings: dict[str, Any]) -> dict[str, Any]:
    """The sampler of a report's ``settings``: nested under ``sampler``, or (reports written before it was) the
    settings themselves.

    Example:
        >>> report_sampler({"sampler": {"solver": "euler"}}), report_sampler({"solver": "heun", "n": 10})["solver"]
        ({'solver': 'euler'}, 'heun')
    """
    return settings.get("sampler") or settings
